//! The Transmission RPC's JSON, legacy protocol (`docs/rpc-spec.md`, rpc-version 17): a request
//! body to a method, its arguments and its tag; an answer to the reply body. Pure: no sockets,
//! no threads; fuzzed (`tests/fuzz/fuzz_targets/rpc_request.rs`).
//!
//! A request is `{"method": NAME, "arguments": {...}, "tag": N}`; `arguments` may be absent
//! (and anything but an object counts as absent, as in transmission), `tag` is echoed when it is
//! an integer. A reply is `{"arguments": {...}, "result": "success" | REASON, "tag": N}`.
//! A body that is not JSON, not an object, or has no string `method` is answered like
//! transmission-daemon answers it (`200 OK`, `result` starting `no method name`), with what is
//! wrong added in parentheses. serde_json bounds nesting (128 levels), so no body overflows the
//! stack.

use serde_json::{Map, Value};

use super::Arguments;

/// What a request body asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// `tag`, when the body is an object whose `tag` is an integer.
    pub tag: Option<i64>,
    /// The method and its arguments, or why there is none (the reply's `result`).
    pub call: Result<(String, Map<String, Value>), String>,
}

/// The `result` of a request without a method, as transmission words it.
pub const NO_METHOD: &str = "no method name";

/// Decodes a request body.
pub fn decode(body: &[u8]) -> Decoded {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return Decoded {
                tag: None,
                call: Err(format!("{NO_METHOD} (the body is not JSON: {e})")),
            };
        }
    };
    let Value::Object(mut request) = value else {
        return Decoded {
            tag: None,
            call: Err(format!("{NO_METHOD} (the request is not a JSON object)")),
        };
    };
    let tag = request.get("tag").and_then(Value::as_i64);
    let call = match request.remove("method") {
        Some(Value::String(method)) => {
            let arguments = match request.remove("arguments") {
                Some(Value::Object(arguments)) => arguments,
                _ => Map::new(),
            };
            Ok((method, arguments))
        }
        Some(_) => Err(format!("{NO_METHOD} (`method` is not a string)")),
        None => Err(NO_METHOD.to_owned()),
    };
    Decoded { tag, call }
}

/// The reply body: `arguments` (empty for a failure), `result` and the echoed `tag`.
pub fn encode(result: Result<Arguments, String>, tag: Option<i64>) -> Vec<u8> {
    let (arguments, result) = match result {
        Ok(arguments) => (arguments, "success".to_owned()),
        Err(reason) => (Arguments::Map(Map::new()), reason),
    };
    let mut reply = Map::new();
    reply.insert("result".into(), Value::String(result));
    if let Some(tag) = tag {
        reply.insert("tag".into(), tag.into());
    }
    match arguments {
        Arguments::Map(arguments) => {
            reply.insert("arguments".into(), Value::Object(arguments));
            serde_json::to_vec(&Value::Object(reply)).expect("a JSON value always serialises")
        }
        Arguments::Json(arguments) => {
            // `{"arguments":` + the text + `,"result":...}`: the keys in the order the map
            // would give them.
            let rest =
                serde_json::to_vec(&Value::Object(reply)).expect("a JSON value always serialises");
            let mut out = Vec::with_capacity(arguments.len() + rest.len() + 16);
            out.extend_from_slice(b"{\"arguments\":");
            out.extend_from_slice(arguments.as_bytes());
            out.push(b',');
            out.extend_from_slice(&rest[1..]);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(body: &str) -> Decoded {
        decode(body.as_bytes())
    }

    #[test]
    fn decodes_method_arguments_and_an_integer_tag() {
        let d = call(r#"{"method":"torrent-get","arguments":{"fields":["id"]},"tag":7}"#);
        let mut args = Map::new();
        args.insert("fields".into(), json!(["id"]));
        assert_eq!(d.tag, Some(7));
        assert_eq!(d.call, Ok(("torrent-get".into(), args)));
        // No arguments, or arguments that are not an object: none, as in transmission.
        for body in [
            r#"{"method":"session-get"}"#,
            r#"{"method":"session-get","arguments":[1]}"#,
            r#"{"method":"session-get","arguments":null}"#,
        ] {
            assert_eq!(
                call(body).call,
                Ok(("session-get".into(), Map::new())),
                "{body}"
            );
        }
        // Only integer tags are echoed.
        for (body, tag) in [
            (r#"{"method":"a","tag":-3}"#, Some(-3)),
            (r#"{"method":"a","tag":99999999999}"#, Some(99_999_999_999)),
            (r#"{"method":"a","tag":2.5}"#, None),
            (r#"{"method":"a","tag":"x"}"#, None),
        ] {
            assert_eq!(call(body).tag, tag, "{body}");
        }
    }

    #[test]
    fn garbage_gets_no_method_name_and_says_what_is_wrong() {
        for (body, want, tag) in [
            ("garbage", "no method name (the body is not JSON: ", None),
            ("", "no method name (the body is not JSON: ", None),
            (
                "[1,2]",
                "no method name (the request is not a JSON object)",
                None,
            ),
            ("{}", "no method name", None),
            (
                r#"{"method":5,"tag":4}"#,
                "no method name (`method` is not a string)",
                Some(4),
            ),
            (r#"{"tag":1}"#, "no method name", Some(1)),
        ] {
            let d = call(body);
            let reason = d.call.unwrap_err();
            assert!(reason.starts_with(want), "{body}: {reason}");
            assert_eq!(d.tag, tag, "{body}");
        }
        // Deep nesting is an error, not a stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(deep.as_bytes()).call.is_err());
    }

    #[test]
    fn replies_carry_arguments_result_and_tag() {
        let mut args = Map::new();
        args.insert("rpc-version".into(), json!(17));
        assert_eq!(
            String::from_utf8(encode(Ok(args.into()), Some(5))).unwrap(),
            r#"{"arguments":{"rpc-version":17},"result":"success","tag":5}"#
        );
        assert_eq!(
            String::from_utf8(encode(Err("no such torrent".into()), None)).unwrap(),
            r#"{"arguments":{},"result":"no such torrent"}"#
        );
    }

    #[test]
    fn replies_with_arguments_as_text_read_as_those_with_a_map() {
        let text = r#"{"torrents":[{"id":1,"name":"a \"b\""}]}"#;
        let map: Map<String, Value> = serde_json::from_str(text).unwrap();
        for tag in [None, Some(3)] {
            let raw = encode(Ok(Arguments::Json(text.to_owned())), tag);
            assert_eq!(raw, encode(Ok(map.clone().into()), tag));
            let reply: Value = serde_json::from_slice(&raw).unwrap();
            assert_eq!(reply["arguments"]["torrents"][0]["name"], "a \"b\"");
        }
    }
}
