// The image table: container images are not pulled; a JSON object maps an image name (without
// registry, tag or digest) to a program on this machine, or to a list of program and default
// arguments, e.g. {"python": "/usr/bin/python3", "onemesh/proxy": "/src/target/debug/onemesh-proxy"}.
package nodeagent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// ImageTable maps normalized image names to an entrypoint (program, then default arguments).
type ImageTable map[string][]string

// LoadImageTable reads the table from path. Values are a string (the program) or a list of
// strings (the program and the image's default arguments).
func LoadImageTable(path string) (ImageTable, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the image table %s: %w (set ONEMESH_K8S_IMAGES or write that file)", path, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("the image table %s is not a JSON object of image names: %w", path, err)
	}
	table := ImageTable{}
	for name, v := range raw {
		var one string
		var many []string
		switch {
		case json.Unmarshal(v, &one) == nil && one != "":
			many = []string{one}
		case json.Unmarshal(v, &many) == nil && len(many) > 0 && many[0] != "":
		default:
			return nil, fmt.Errorf("the image table %s: %q must map to a program path or a non-empty list of strings", path, name)
		}
		table[NormalizeImage(name)] = many
	}
	return table, nil
}

// NormalizeImage drops the digest, the tag, a registry host (a first part with a dot or colon,
// or "localhost") and Docker Hub's "library/": "docker.io/library/python:3.12" -> "python".
func NormalizeImage(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	parts := strings.Split(image, "/")
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		parts = parts[1:]
	}
	if len(parts) > 1 && parts[0] == "library" {
		parts = parts[1:]
	}
	return strings.Join(parts, "/")
}

// Lookup finds an image's entrypoint: by its normalized name, else by its last path segment.
func (t ImageTable) Lookup(image string) ([]string, bool) {
	key := NormalizeImage(image)
	if e, ok := t[key]; ok {
		return e, true
	}
	if i := strings.LastIndex(key, "/"); i >= 0 {
		e, ok := t[key[i+1:]]
		return e, ok
	}
	return nil, false
}

// Argv is what a container runs, as in Kubernetes: `command` replaces the image's entrypoint
// (program and default arguments), `args` replaces its default arguments. A command whose first
// word is neither an existing absolute path nor a program on searchPath (the container's PATH)
// names the image's own program, so it is replaced by the table's program.
func Argv(entrypoint, command, args []string, searchPath string) ([]string, error) {
	var argv []string
	switch {
	case len(command) > 0:
		argv = append(append(argv, command...), args...)
		if resolved, ok := findProgram(command[0], searchPath); ok {
			argv[0] = resolved
		} else {
			argv[0] = entrypoint[0]
		}
	case len(args) > 0:
		argv = append([]string{entrypoint[0]}, args...)
	default:
		argv = append(argv, entrypoint...)
	}
	if _, ok := findProgram(argv[0], searchPath); !ok {
		return nil, fmt.Errorf("program %s does not exist or is not executable on this machine (fix the image table)", argv[0])
	}
	resolved, _ := findProgram(argv[0], searchPath)
	argv[0] = resolved
	return argv, nil
}

func findProgram(name, searchPath string) (string, bool) {
	if strings.Contains(name, "/") {
		if st, err := os.Stat(name); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return name, true
		}
		return "", false
	}
	for _, dir := range filepath.SplitList(searchPath) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}
