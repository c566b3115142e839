//! One HTTP(S) announce (BEP 3, BEP 23) or scrape (BEP 48) with attohttpc, run on the announcer
//! thread.
//!
//! Each blocks for at most about twice `timeout` (connect, then the whole exchange) and reads at
//! most [`MAX_REPLY_BYTES`] of the reply, so a tracker that is slow, silent or chatty cannot hold
//! the announcer. It does not retry or choose trackers: that is the announcer's job.

use std::io::Read;
use std::time::Duration;

use attohttpc::{Method, RequestBuilder, StatusCode};

use super::{
    AnnounceRequest, AnnounceResponse, ScrapeCounts, TrackerError, announce_url,
    parse_announce_response, parse_scrape_response, scrape_url,
};

/// The largest reply body we read. A compact reply with a few hundred peers is a few KiB.
pub const MAX_REPLY_BYTES: u64 = 1 << 20;

/// Whether `url` is one this module can announce to (`http://` or `https://`, any case).
pub fn is_supported(url: &str) -> bool {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
}

/// Announces `req` to the HTTP(S) tracker at `base` and parses its reply.
///
/// `timeout` bounds the connect and, separately, the whole exchange after it (attohttpc's
/// connect, read and overall timeouts). Redirects are followed. A non-200 reply whose body is a
/// bencoded `failure reason` is reported as that failure.
///
/// # Errors
/// [`TrackerError::UnsupportedScheme`] for anything but `http://` and `https://` (no I/O is done);
/// [`TrackerError::Request`] for an invalid URL, a transport error or timeout, a non-200 status, or
/// a body over [`MAX_REPLY_BYTES`]; otherwise whatever [`parse_announce_response`] says. Every
/// error carries `base`.
pub fn announce(
    base: &str,
    req: &AnnounceRequest,
    timeout: Duration,
) -> Result<AnnounceResponse, TrackerError> {
    if !is_supported(base) {
        return Err(TrackerError::UnsupportedScheme {
            url: base.to_owned(),
        });
    }
    get(base, &announce_url(base, req), timeout, |body| {
        parse_announce_response(base, body)
    })
}

/// Scrapes the HTTP(S) tracker whose announce URL is `base` for one torrent (BEP 48).
///
/// The scrape URL comes from [`scrape_url`]; `timeout` bounds the exchange as in [`announce`].
///
/// # Errors
/// [`TrackerError::UnsupportedScheme`] for anything but `http://` and `https://` and
/// [`TrackerError::NoScrape`] when `base` has no scrape URL (no I/O is done for either); otherwise
/// the errors of [`announce`], with [`parse_scrape_response`] reading the body.
pub fn scrape(
    base: &str,
    info_hash: &[u8; 20],
    timeout: Duration,
) -> Result<ScrapeCounts, TrackerError> {
    if !is_supported(base) {
        return Err(TrackerError::UnsupportedScheme {
            url: base.to_owned(),
        });
    }
    let url = scrape_url(base, info_hash).ok_or_else(|| TrackerError::NoScrape {
        url: base.to_owned(),
    })?;
    get(base, &url, timeout, |body| {
        parse_scrape_response(base, body, info_hash)
    })
}

/// GETs `url` (made from the tracker's announce URL `base`, which every error carries) and hands
/// a 200 body to `parse`. A non-200 reply whose body `parse` reads as a failure reason is reported
/// as that failure.
fn get<T>(
    base: &str,
    url: &str,
    timeout: Duration,
    parse: impl Fn(&[u8]) -> Result<T, TrackerError>,
) -> Result<T, TrackerError> {
    let request_error = |error: String| TrackerError::Request {
        url: base.to_owned(),
        error,
    };
    let response = RequestBuilder::try_new(Method::GET, url)
        .map_err(|e| request_error(e.to_string()))?
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .timeout(timeout)
        .header(
            attohttpc::header::USER_AGENT,
            concat!("btd/", env!("CARGO_PKG_VERSION")),
        )
        .send()
        .map_err(|e| request_error(e.to_string()))?;
    let (status, _headers, reader) = response.split();

    let mut body = Vec::new();
    reader
        .take(MAX_REPLY_BYTES + 1)
        .read_to_end(&mut body)
        .map_err(|e| request_error(format!("reading the reply: {e}")))?;
    let too_long = u64::try_from(body.len()).map_or(true, |len| len > MAX_REPLY_BYTES);

    if status != StatusCode::OK {
        // Some trackers put a `failure reason` in a 4xx reply; it says more than the status.
        if !too_long && let Err(failure @ TrackerError::Failure { .. }) = parse(&body) {
            return Err(failure);
        }
        return Err(request_error(format!("HTTP status {status}")));
    }
    if too_long {
        return Err(request_error(format!(
            "reply longer than {MAX_REPLY_BYTES} bytes"
        )));
    }
    parse(&body)
}

/// A scripted HTTP server on 127.0.0.1 for the tests of this module and of the announcer.
#[cfg(test)]
pub(crate) mod fake {
    use std::io::{ErrorKind, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::{self, JoinHandle};
    use std::time::{Duration, Instant};

    use crossbeam_channel::{Receiver, Sender};

    /// How long the server waits for a connection or for bytes before giving up.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// What the server does with one connection.
    pub(crate) enum Reply {
        /// Reads the request, writes these bytes, closes.
        Raw(Vec<u8>),
        /// Reads the request and never answers; holds the connection until the client closes it.
        Silent,
    }

    /// A `200 OK` with `body`.
    pub(crate) fn ok(body: &[u8]) -> Reply {
        with_status("200 OK", body)
    }

    /// A reply with the given status line tail (`"404 Not Found"`) and `body`.
    pub(crate) fn with_status(status: &str, body: &[u8]) -> Reply {
        let mut raw = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        Reply::Raw(raw)
    }

    /// A server that handles one connection per reply, in order, then exits.
    pub(crate) struct FakeTracker {
        /// `http://127.0.0.1:PORT/announce`.
        pub(crate) url: String,
        /// The request target (path and query) of each request, as it arrives.
        pub(crate) requests: Receiver<String>,
        handle: JoinHandle<()>,
    }

    impl FakeTracker {
        /// Starts the server thread.
        pub(crate) fn serve(replies: Vec<Reply>) -> FakeTracker {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let url = format!("http://{}/announce", listener.local_addr().unwrap());
            let (tx, requests) = crossbeam_channel::unbounded();
            let handle = thread::Builder::new()
                .name("fake tracker".to_owned())
                .spawn(move || run(&listener, replies, &tx))
                .unwrap();
            FakeTracker {
                url,
                requests,
                handle,
            }
        }

        /// Waits (bounded) for the next request target.
        pub(crate) fn next_request(&self) -> String {
            self.requests
                .recv_timeout(PATIENCE)
                .expect("the fake tracker got no request in time")
        }

        /// Waits (bounded) for the server thread to finish and checks it did not panic.
        pub(crate) fn join(self) {
            let deadline = Instant::now() + PATIENCE * 2;
            while !self.handle.is_finished() {
                assert!(Instant::now() < deadline, "the fake tracker did not finish");
                thread::sleep(Duration::from_millis(5));
            }
            self.handle.join().expect("the fake tracker panicked");
        }
    }

    fn run(listener: &TcpListener, replies: Vec<Reply>, requests: &Sender<String>) {
        for reply in replies {
            let Some(mut stream) = accept(listener) else {
                return;
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(PATIENCE)).unwrap();
            let Some(target) = read_request_target(&mut stream) else {
                continue;
            };
            let _ = requests.send(target);
            match reply {
                Reply::Raw(bytes) => {
                    // The client may already have given up; that is its business.
                    let _ = stream.write_all(&bytes);
                }
                Reply::Silent => {
                    // Returns when the client closes (0 or an error) or PATIENCE runs out.
                    let _ = stream.read(&mut [0; 64]);
                }
            }
        }
    }

    fn accept(listener: &TcpListener) -> Option<TcpStream> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return None,
            }
        }
    }

    /// Reads the request head and returns the target of its request line.
    fn read_request_target(stream: &mut TcpStream) -> Option<String> {
        let mut head = Vec::new();
        let mut buf = [0; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 || head.len() > 64 * 1024 {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8(head).ok()?;
        let line = head.lines().next()?;
        let mut words = line.split(' ');
        assert_eq!(words.next(), Some("GET"), "request line {line:?}");
        let target = words.next()?.to_owned();
        assert_eq!(words.next(), Some("HTTP/1.1"), "request line {line:?}");
        Some(target)
    }
}

#[cfg(test)]
mod tests {
    use crate::peer::mse::Encryption;
    use std::net::{SocketAddr, TcpListener};
    use std::time::Instant;

    use super::fake::{FakeTracker, Reply, ok, with_status};
    use super::*;
    use crate::tracker::AnnounceEvent;

    fn request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: [0xAB; 20],
            peer_id: *b"-BT0001-012345678901",
            port: 51413,
            uploaded: 10,
            downloaded: 20,
            left: 30,
            event: Some(AnnounceEvent::Started),
            numwant: 80,
            tracker_id: None,
            key: 0x1234_5678,
            addrs: crate::tracker::OurAddrs::default(),
            encryption: Encryption::Preferred,
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    #[test]
    fn announces_over_http_and_parses_the_compact_reply() {
        let mut body = b"d8:intervali1800e5:peers12:".to_vec();
        body.extend_from_slice(&[127, 0, 0, 2, 0x1A, 0xE1, 10, 0, 0, 9, 0xC8, 0xD5]);
        body.push(b'e');
        let tracker = FakeTracker::serve(vec![ok(&body)]);
        let reply = announce(&tracker.url, &request(), TIMEOUT).unwrap();
        assert_eq!(reply.interval, Duration::from_secs(1800));
        assert_eq!(
            reply.peers,
            ["127.0.0.2:6881", "10.0.0.9:51413"]
                .map(|s| s.parse::<SocketAddr>().unwrap())
                .to_vec()
        );
        let hash = "%AB".repeat(20);
        assert_eq!(
            tracker.next_request(),
            format!(
                "/announce?info_hash={hash}&peer_id=-BT0001-012345678901&port=51413\
                 &uploaded=10&downloaded=20&left=30&compact=1&numwant=80&supportcrypto=1&event=started"
            )
        );
        tracker.join();
    }

    #[test]
    fn keeps_a_passkey_query_in_the_request() {
        let tracker = FakeTracker::serve(vec![ok(b"d8:intervali60ee")]);
        let base = format!("{}?passkey=s3cr3t", tracker.url);
        announce(&base, &request(), TIMEOUT).unwrap();
        assert!(
            tracker
                .next_request()
                .starts_with("/announce?passkey=s3cr3t&info_hash=%AB")
        );
        tracker.join();
    }

    #[test]
    fn reports_a_garbage_reply_as_malformed_with_the_url() {
        let tracker = FakeTracker::serve(vec![ok(b"<html>hello</html>")]);
        let err = announce(&tracker.url, &request(), TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Malformed { url, .. } if *url == tracker.url),
            "{err:?}"
        );
        assert!(err.to_string().contains(&tracker.url));
        tracker.join();
    }

    #[test]
    fn reports_a_non_200_status_as_a_request_error() {
        let tracker = FakeTracker::serve(vec![with_status("404 Not Found", b"no such page")]);
        let err = announce(&tracker.url, &request(), TIMEOUT).unwrap_err();
        match &err {
            TrackerError::Request { url, error } => {
                assert_eq!(*url, tracker.url);
                assert!(error.contains("404"), "{error}");
            }
            other => panic!("expected Request, got {other:?}"),
        }
        tracker.join();
    }

    #[test]
    fn reports_the_failure_reason_of_a_non_200_reply() {
        let tracker = FakeTracker::serve(vec![with_status(
            "403 Forbidden",
            b"d14:failure reason11:bad passkeye",
        )]);
        let err = announce(&tracker.url, &request(), TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure { reason, .. } if reason == "bad passkey"),
            "{err:?}"
        );
        tracker.join();
    }

    #[test]
    fn rejects_a_reply_over_one_mebibyte() {
        let mut body = b"d8:intervali60e4:junk1048576:".to_vec();
        body.resize(body.len() + (1 << 20), b'x');
        body.push(b'e');
        let tracker = FakeTracker::serve(vec![ok(&body)]);
        let err = announce(&tracker.url, &request(), TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Request { error, .. } if error.contains("longer")),
            "{err:?}"
        );
        tracker.join();
    }

    #[test]
    fn gives_up_on_a_tracker_that_never_answers_within_the_timeout() {
        let tracker = FakeTracker::serve(vec![Reply::Silent]);
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let err = announce(&tracker.url, &request(), timeout).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(&err, TrackerError::Request { .. }), "{err:?}");
        assert!(took >= timeout, "gave up after {took:?}");
        assert!(took < timeout * 2 + Duration::from_secs(2), "took {took:?}");
        tracker.next_request();
        tracker.join();
    }

    #[test]
    fn reports_a_refused_connection_as_a_request_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}/announce");
        let err = announce(&base, &request(), TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Request { url, .. } if *url == base),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_udp_and_unknown_schemes_without_io() {
        for base in [
            "udp://tracker.example:6969/announce",
            "wss://t/a",
            "nonsense",
        ] {
            let err = announce(base, &request(), TIMEOUT).unwrap_err();
            assert!(
                matches!(&err, TrackerError::UnsupportedScheme { url } if url == base),
                "{err:?}"
            );
        }
        assert!(is_supported("HTTPS://t/a") && is_supported("http://t/a"));
    }

    #[test]
    fn scrapes_over_http_at_the_bep_48_url() {
        let mut body = b"d5:filesd20:".to_vec();
        body.extend_from_slice(&[0xAB; 20]);
        body.extend_from_slice(b"d8:completei7e10:downloadedi30e10:incompletei2eeee");
        let tracker = FakeTracker::serve(vec![ok(&body)]);
        let base = format!("{}?passkey=k", tracker.url);
        let counts = scrape(&base, &[0xAB; 20], TIMEOUT).unwrap();
        assert_eq!(
            counts,
            ScrapeCounts {
                seeders: 7,
                leechers: 2,
                completed: Some(30),
            }
        );
        assert_eq!(
            tracker.next_request(),
            format!("/scrape?passkey=k&info_hash={}", "%AB".repeat(20))
        );
        tracker.join();
    }

    #[test]
    fn reports_a_scrape_failure_reason_even_with_a_non_200_status() {
        let tracker = FakeTracker::serve(vec![with_status(
            "400 Bad Request",
            b"d14:failure reason16:scrape forbiddene",
        )]);
        let err = scrape(&tracker.url, &[1; 20], TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure { reason, .. } if reason == "scrape forbidden"),
            "{err:?}"
        );
        tracker.join();
    }

    #[test]
    fn does_not_scrape_without_a_scrape_url_or_over_udp() {
        let err = scrape("http://127.0.0.1:1/tracker", &[1; 20], TIMEOUT).unwrap_err();
        assert!(matches!(&err, TrackerError::NoScrape { .. }), "{err:?}");
        let err = scrape("udp://127.0.0.1:1/announce", &[1; 20], TIMEOUT).unwrap_err();
        assert!(
            matches!(&err, TrackerError::UnsupportedScheme { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn reports_an_unparseable_url_as_a_request_error() {
        let err = announce("http://[not a host/announce", &request(), TIMEOUT).unwrap_err();
        assert!(matches!(&err, TrackerError::Request { .. }), "{err:?}");
    }
}
