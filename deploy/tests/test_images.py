"""scripts/images: builds the three OCI image layouts from the existing binaries (into a temporary
directory) and inspects them: the tag, the config (entrypoint, non-root user, labels), the single
layer (the binary, every library `ldd` lists, the ELF interpreter, /etc/passwd naming the user),
the size, and that the binary runs from the layer alone (chroot into the unpacked layer as root;
otherwise through the layer's own dynamic loader with the layer's libraries only).

The binaries come from ${CARGO_TARGET_DIR:-target}/<profile> (ONEMESH_IMAGES_PROFILE, default: what
scripts/images picks); build them first (scripts/test does).
"""

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import unittest
from pathlib import Path

from support import ROOT

NAMES = {"proxy": "2102:2102", "control": "65532:65532", "platform": "65532:65532"}
# What each binary prints when run with no configuration: proof that it loaded and reached main.
RUNS = {
    "proxy": ([], "ONEMESH_PROXY_IDENTITY"),
    "control": (["--help"], "Usage: onemesh-control"),
    "platform": (["--help"], "Usage: onemesh-platform"),
}


def blob(layout, descriptor):
    algo, digest = descriptor["digest"].split(":", 1)
    return layout / "blobs" / algo / digest


class Images(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not shutil.which("umoci"):
            raise AssertionError("umoci is not installed: apt-get install umoci (scripts/install-test-deps does)")
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = Path(cls.tmp.name) / "images"
        argv = [str(ROOT / "scripts" / "images"), "--out", str(cls.out), "--tag", "v0.0.0-test"]
        if os.environ.get("ONEMESH_IMAGES_PROFILE"):
            argv += ["--profile", os.environ["ONEMESH_IMAGES_PROFILE"]]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            cls.tmp.cleanup()
            raise AssertionError(f"scripts/images failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        cls.report = proc.stdout
        print("\n" + "".join(l + "\n" for l in proc.stdout.splitlines() if l.startswith("onemesh/")), end="")

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def image(self, name):
        layout = self.out / f"onemesh-{name}"
        self.assertEqual(json.loads((layout / "oci-layout").read_text())["imageLayoutVersion"], "1.0.0")
        index = json.loads((layout / "index.json").read_text())
        tagged = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == "v0.0.0-test"]
        self.assertEqual(len(tagged), 1, f"{layout}: one manifest tagged v0.0.0-test")
        manifest = json.loads(blob(layout, tagged[0]).read_text())
        config = json.loads(blob(layout, manifest["config"]).read_text())
        return layout, manifest, config

    def unpack(self, name):
        layout, manifest, _ = self.image(name)
        self.assertEqual(len(manifest["layers"]), 1, "one layer: no base image")
        rootfs = Path(self.tmp.name) / f"rootfs-{name}"
        if not rootfs.exists():
            with tarfile.open(blob(layout, manifest["layers"][0])) as tar:
                try:
                    tar.extractall(rootfs, filter="tar")
                except TypeError:  # Python without extraction filters (before 3.11.4)
                    tar.extractall(rootfs)
        return rootfs

    def test_config(self):
        for name, user in NAMES.items():
            with self.subTest(image=name):
                _, _, config = self.image(name)
                c = config["config"]
                self.assertEqual(c["Entrypoint"], [f"/usr/local/bin/onemesh-{name}"])
                self.assertEqual(c["User"], user)
                self.assertNotIn(c["User"].split(":")[0], ("0", "root", ""))
                self.assertEqual((config["os"], config["architecture"]), ("linux", "amd64"))
                labels = c["Labels"]
                self.assertEqual(labels["org.opencontainers.image.title"], f"onemesh/{name}")
                self.assertEqual(labels["org.opencontainers.image.version"], "v0.0.0-test")
                self.assertRegex(labels["org.opencontainers.image.revision"], r"^([0-9a-f]{40}|unknown)$")
                for key in ("created", "description", "licenses"):
                    self.assertIn(f"org.opencontainers.image.{key}", labels)

    def test_layer_holds_the_binary_its_libraries_and_its_user(self):
        for name, user in NAMES.items():
            with self.subTest(image=name):
                rootfs = self.unpack(name)
                binary = rootfs / "usr/local/bin" / f"onemesh-{name}"
                self.assertEqual(binary.read_bytes()[:4], b"\x7fELF")
                self.assertTrue(os.access(binary, os.X_OK))
                # Stripped: no symbol table left.
                sections = subprocess.run(["objdump", "-h", str(binary)], capture_output=True, text=True).stdout
                self.assertNotIn(".symtab", sections)
                self.assertNotIn(".debug_info", sections)
                # Every library the binary needs, and its interpreter, are in the layer.
                interp = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True).stdout
                m = re.search(r"Requesting program interpreter: (\S+)\]", interp)
                self.assertTrue(m, "dynamically linked, with an interpreter")
                self.assertTrue((rootfs / m.group(1).lstrip("/")).exists(), f"interpreter {m.group(1)} missing")
                needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True).stdout)
                self.assertTrue(needed)
                present = {p.name for p in rootfs.rglob("*.so*")}
                self.assertFalse(set(needed) - present, f"libraries missing from the layer: {set(needed) - present}")
                # Nothing but the binary, the libraries, the loader, passwd/group and /tmp.
                files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if p.is_file())
                extra = [f for f in files if not (f.startswith(("lib/", "lib64/", "usr/lib")) or f in ("etc/passwd", "etc/group", f"usr/local/bin/onemesh-{name}"))]
                self.assertEqual(extra, [])
                self.assertFalse((rootfs / "bin/sh").exists(), "no shell in the image")
                uid = user.split(":")[0]
                passwd = (rootfs / "etc/passwd").read_text()
                self.assertRegex(passwd, rf"(?m)^onemesh:x:{uid}:{uid}:")

    def test_size(self):
        for name in NAMES:
            with self.subTest(image=name):
                layout, manifest, _ = self.image(name)
                layer = manifest["layers"][0]["size"]
                self.assertEqual(layer, blob(layout, manifest["layers"][0]).stat().st_size)
                # A debug build's stripped binary compresses to well under 40 MB; a release one
                # to a few MB. A layer this big means something else got in.
                self.assertLess(layer, 40 * 1024 * 1024, f"onemesh-{name}: layer of {layer} bytes")

    def test_binary_runs_from_the_layer_alone(self):
        for name, (args, expect) in RUNS.items():
            with self.subTest(image=name):
                rootfs = self.unpack(name)
                if os.getuid() == 0:
                    argv = [shutil.which("chroot") or "/usr/sbin/chroot", "--userspec", NAMES[name], str(rootfs), f"/usr/local/bin/onemesh-{name}", *args]
                else:
                    libs = ":".join(str(p) for p in (rootfs / "lib/x86_64-linux-gnu", rootfs / "usr/lib/x86_64-linux-gnu") if p.exists())
                    argv = [str(rootfs / "lib64/ld-linux-x86-64.so.2"), "--inhibit-cache", "--library-path", libs,
                            str(rootfs / f"usr/local/bin/onemesh-{name}"), *args]
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={})
                self.assertIn(expect, proc.stdout + proc.stderr, f"{argv}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")


if __name__ == "__main__":
    unittest.main()
