//! Transmission RPC request bodies, as any allowed client may post them: decoding ends in a call
//! or a `result` saying what is wrong, and a call's arguments survive the reply's encoding.
#![no_main]

use btd::rpc::Arguments;
use btd::rpc::protocol::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    let Ok((_method, arguments)) = decoded.call else {
        return;
    };
    let reply = encode(Ok(Arguments::Map(arguments.clone())), decoded.tag);
    let back: serde_json::Value = serde_json::from_slice(&reply).expect("our reply is JSON");
    assert_eq!(back["arguments"], serde_json::Value::Object(arguments));
    assert_eq!(back["result"], "success");
    assert_eq!(back.get("tag").and_then(serde_json::Value::as_i64), decoded.tag);
});
