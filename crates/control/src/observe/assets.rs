//! The dashboard's static files, built from `dashboard/` (npm, esbuild) into
//! `crates/control/dashboard/` and compiled into the control plane: nothing is fetched at run
//! time, and no file holds data (the page reads the API after login).

/// The files: request path, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../dashboard/index.html"),
    ),
    (
        "/assets/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/app.js"),
    ),
    (
        "/assets/app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/app.css"),
    ),
    (
        "/assets/licenses.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../dashboard/licenses.txt"),
    ),
];

/// The file served at `path`, if any.
pub fn find(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/index.html" { "/" } else { path };
    FILES
        .iter()
        .find(|(p, _, _)| *p == path)
        .map(|(_, ctype, bytes)| (*ctype, *bytes))
}
