//! Static files of a Transmission-compatible web client, from `[rpc] web_dir`, at
//! `/transmission/web/...`. Runs on the `rpc http N` workers, after the IP and auth checks.
//!
//! A URL path maps to a file under the directory only through plain names: after
//! percent-decoding, a component that is empty, `.`, `..`, starts with a dot, or holds a
//! backslash or NUL gets 404 (logged as a traversal attempt), and so does anything that is not a
//! regular file or is larger than [`MAX_FILE_BYTES`]. Symbolic links inside the directory are
//! followed: what the directory holds is the admin's choice (Debian's web client links to shared
//! JavaScript libraries).

use std::net::SocketAddr;
use std::path::Path;

use crate::http_server::Response;
use crate::percent;

/// Files larger than this are not served (the web client's largest file is well under 1 MiB).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The `Content-Type` for a file name.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, ext)| ext);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "application/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "png" => "image/png",
        "gif" => "image/gif",
        "jpg" | "jpeg" => "image/jpeg",
        "svg" => "image/svg+xml",
        "ico" => "image/vnd.microsoft.icon",
        "txt" => "text/plain; charset=utf-8",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The file under `dir` for `sub` (the URL path after `/transmission/web/`, percent-encoded), or
/// `None` when `sub` names something outside plain names. An empty path or one ending in `/`
/// means its `index.html`.
pub fn resolve(dir: &Path, sub: &[u8]) -> Option<std::path::PathBuf> {
    let decoded = percent::decode(sub, false)?;
    let decoded = String::from_utf8(decoded).ok()?;
    let mut path = dir.to_path_buf();
    let mut parts: Vec<&str> = decoded.split('/').collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
        parts.push("index.html");
    }
    for part in parts {
        if part.is_empty() || part.starts_with('.') || part.contains(['\\', '\0']) {
            return None;
        }
        path.push(part);
    }
    Some(path)
}

/// The reply for `sub` under `dir`: the file, or 404.
pub fn serve(dir: &Path, sub: &[u8], peer: SocketAddr) -> Response {
    let Some(path) = resolve(dir, sub) else {
        log::warn!(
            "rpc: {peer}: refused /transmission/web/{} (not a plain file name; a traversal \
             attempt?)",
            String::from_utf8_lossy(sub)
        );
        return not_found();
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.len() <= MAX_FILE_BYTES => {}
        Ok(_) | Err(_) => return not_found(),
    }
    match std::fs::read(&path) {
        Ok(body) => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            Response::new(200, content_type(name.as_deref().unwrap_or("")), body)
        }
        Err(e) => {
            log::debug!("rpc: {peer}: {}: {e}", path.display());
            not_found()
        }
    }
}

fn not_found() -> Response {
    Response::text(404, "not found\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_resolve_and_everything_else_is_refused() {
        let dir = Path::new("/srv/web");
        assert_eq!(resolve(dir, b""), Some(dir.join("index.html")));
        assert_eq!(
            resolve(dir, b"images/"),
            Some(dir.join("images/index.html"))
        );
        assert_eq!(
            resolve(dir, b"javascript/main%2Ejs"),
            Some(dir.join("javascript/main.js"))
        );
        for bad in [
            &b"../etc/passwd"[..],
            b"..",
            b"images/../../x",
            b"%2e%2e/x",
            b"%2E%2E%2Fetc%2Fpasswd",
            b"a/%2e%2e/%2e%2e/b",
            b"/etc/passwd",
            b"a//b",
            b".htpasswd",
            b"./index.html",
            b"a\\..\\b",
            b"a%5C..%5Cb",
            b"x%00.html",
            b"%zz",
            b"%ff%fe",
        ] {
            assert_eq!(resolve(dir, bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("a.min.JS"),
            "application/javascript; charset=utf-8"
        );
        assert_eq!(content_type("s.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("logo.png"), "image/png");
        assert_eq!(content_type("x.svg"), "image/svg+xml");
        assert_eq!(content_type("favicon.ico"), "image/vnd.microsoft.icon");
        assert_eq!(content_type("m.json"), "application/json");
        assert_eq!(content_type("README"), "application/octet-stream");
    }
}
