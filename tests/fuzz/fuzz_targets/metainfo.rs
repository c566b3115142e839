//! `.torrent` files: the bencode span walker and the whole metainfo check. A torrent that is
//! accepted has a consistent geometry and only plain relative paths.
#![no_main]

use std::path::Component;

use btd::bencode::check_one_value;
use btd::metainfo::Metainfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_one_value(data);
    let Ok(meta) = Metainfo::from_bytes(data) else {
        return;
    };
    let g = meta.geometry;
    assert_eq!(meta.piece_hashes.len(), g.num_pieces as usize);
    assert_eq!(meta.files.iter().map(|f| f.len).sum::<u64>(), g.total_len);
    assert!(g.num_pieces > 0 && g.piece_len > 0);
    let last = g.num_pieces - 1;
    assert!(g.piece_len(last) > 0 && g.blocks_in_piece(last) > 0);
    for file in &meta.files {
        assert!(
            file.path
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        );
    }
    let again = Metainfo::from_bytes(&meta.to_torrent_bytes()).expect("our own bytes parse");
    assert_eq!(again.info_hash, meta.info_hash);
});
