//! The decoy: what anyone without the relay's secret sees, an ordinary
//! website with the headers and error pages nginx sends.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED, SERVER,
};
use hyper::{Method, Request, Response, StatusCode};

/// Files larger than this are not served (a decoy site is small).
const MAX_FILE: u64 = 16 * 1024 * 1024;

const BUILT_IN_PAGE: &str = "<!DOCTYPE html>
<html lang=\"en\">
<head>
<meta charset=\"utf-8\">
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">
<title>Notes</title>
<style>body{max-width:40em;margin:3em auto;padding:0 1em;font-family:Georgia,serif;color:#222;line-height:1.5}h1{font-weight:normal}</style>
</head>
<body>
<h1>Notes</h1>
<p>Nothing here yet. Check back soon.</p>
</body>
</html>
";

/// What a request that is not the secret upgrade gets.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// A folder of static files; `None` serves a small built-in page.
    root: Option<PathBuf>,
}

fn nginx_error(status: StatusCode) -> String {
    let line = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
}

/// The body nginx answers a plain HTTP request on its TLS port with.
pub(crate) const PLAIN_HTTP_ON_TLS_PORT: &str = "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\nContent-Length: 248\r\nConnection: close\r\n\r\n<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" => "application/javascript",
        "json" => "application/json",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "svg" => "image/svg+xml",
        "ico" => "image/x-icon",
        "txt" => "text/plain",
        "xml" => "text/xml",
        "pdf" => "application/pdf",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

struct Page {
    body: Bytes,
    content_type: &'static str,
    modified: Option<SystemTime>,
}

impl Site {
    /// A site served from `root` (static files; `index.html` for folders).
    pub fn folder(root: PathBuf) -> Self {
        Self { root: Some(root) }
    }

    /// The small built-in page.
    pub fn built_in() -> Self {
        Self { root: None }
    }

    async fn find(&self, path: &str) -> Option<Page> {
        let path = percent_decode(path)?;
        let Some(root) = &self.root else {
            return matches!(path.as_str(), "/" | "/index.html").then(|| Page {
                body: Bytes::from_static(BUILT_IN_PAGE.as_bytes()),
                content_type: "text/html",
                modified: None,
            });
        };
        let relative = path.trim_start_matches('/');
        if relative.split('/').any(|s| s == ".." || s.starts_with('.')) {
            return None;
        }
        let mut file = root.join(relative);
        if tokio::fs::metadata(&file).await.ok()?.is_dir() {
            file = file.join("index.html");
        }
        // No way out of the folder, through links either.
        let real = tokio::fs::canonicalize(&file).await.ok()?;
        let real_root = tokio::fs::canonicalize(root).await.ok()?;
        if !real.starts_with(&real_root) {
            return None;
        }
        let meta = tokio::fs::metadata(&real).await.ok()?;
        if !meta.is_file() || meta.len() > MAX_FILE {
            return None;
        }
        Some(Page {
            body: tokio::fs::read(&real).await.ok()?.into(),
            content_type: content_type(&real),
            modified: meta.modified().ok(),
        })
    }

    /// The answer to one request, as nginx serving static files gives it.
    pub(crate) async fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let head = req.method() == Method::HEAD;
        if req.method() != Method::GET && !head {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED);
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let Some(page) = self.find(req.uri().path()).await else {
            return error(StatusCode::NOT_FOUND);
        };
        let len = page.body.len();
        let body = if head { Bytes::new() } else { page.body };
        let mut r = Response::new(Full::new(body));
        let h = r.headers_mut();
        h.insert(SERVER, HeaderValue::from_static("nginx"));
        h.insert(CONTENT_TYPE, HeaderValue::from_static(page.content_type));
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        if let Some(m) = page.modified {
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(m)) {
                h.insert(LAST_MODIFIED, v);
            }
            let secs = m
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if let Ok(v) = HeaderValue::from_str(&format!("\"{secs:x}-{len:x}\"")) {
                h.insert(ETAG, v);
            }
        }
        r
    }
}

/// An nginx error page.
pub(crate) fn error(status: StatusCode) -> Response<Full<Bytes>> {
    let body = nginx_error(status);
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("nginx"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("request")
    }

    #[tokio::test]
    async fn a_folder_is_served_and_nothing_outside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("docs")).expect("mkdir");
        std::fs::write(root.join("index.html"), "<p>home</p>").expect("write");
        std::fs::write(root.join("docs/a b.txt"), "text").expect("write");
        std::fs::write(dir.path().join("secret.txt"), "no").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.txt"))
            .expect("symlink");
        let site = Site::folder(root);
        let home = site.respond(&get("/")).await;
        assert_eq!(home.status(), StatusCode::OK);
        assert_eq!(home.headers()[CONTENT_TYPE], "text/html");
        assert_eq!(home.headers()[SERVER], "nginx");
        assert!(home.headers().contains_key(ETAG));
        assert_eq!(
            site.respond(&get("/docs/a%20b.txt")).await.status(),
            StatusCode::OK
        );
        for path in [
            "/../secret.txt",
            "/docs/../../secret.txt",
            "/link.txt",
            "/%2e%2e/secret.txt",
            "/nope",
        ] {
            let r = site.respond(&get(path)).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let post = Request::post("/").body(()).expect("request");
        assert_eq!(
            site.respond(&post).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn the_built_in_page_says_nothing_about_chapar() {
        let r = Site::built_in().respond(&get("/")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let page = BUILT_IN_PAGE.to_lowercase();
        for word in ["chapar", "libp2p", "relay", "noise"] {
            assert!(!page.contains(word), "{word}");
        }
        assert_eq!(
            Site::built_in().respond(&get("/x")).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}
