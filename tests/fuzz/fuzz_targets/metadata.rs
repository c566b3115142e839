//! Magnet metadata (BEP 9): a `ut_metadata` message (the codec the metadata fetch uses), and fetched
//! info dictionary bytes turned into a torrent (a stranger can make bytes that hash to a magnet
//! link of its own).
#![no_main]

use btd::wire::extension::MetadataMessage;
use btd::metainfo::Metainfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = MetadataMessage::decode(data);
    let trackers = vec![vec!["http://t/announce".to_string()]];
    if let Ok(meta) = Metainfo::from_info_bytes(data, &trackers) {
        assert_eq!(&*meta.info_bytes, data);
        let again = Metainfo::from_bytes(&meta.to_torrent_bytes()).expect("our own bytes parse");
        assert_eq!(again.info_hash, meta.info_hash);
    }
});
