//! INCREMENTAL files and reconstruction input: the header parser on arbitrary bytes (the input's
//! length is the file size), then a reconstruction plan from up to three parsed headers and a
//! full-file size, whose every block source must lie inside the file it names.
#![no_main]
use basebackup::incremental::{plan, BlockSource, IncrementalHeader, Version, BLCKSZ};

fn header(data: &[u8]) -> Option<IncrementalHeader> {
    let h = IncrementalHeader::parse(data, data.len() as u64).ok()?;
    // what parses re-encodes to the same header bytes (padding aside)
    let enc = h.encode();
    assert_eq!(&enc[..12 + 4 * h.blocks.len()], &data[..12 + 4 * h.blocks.len()]);
    assert_eq!(h.file_size(), data.len() as u64);
    Some(h)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // the whole input as one file
    let _ = header(data);
    // or: a full-file size, then up to three files separated by the length prefixes
    if data.len() < 4 {
        return;
    }
    let full_blocks = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) % (1 << 18);
    let mut rest = &data[4..];
    let mut files: Vec<IncrementalHeader> = Vec::new();
    while rest.len() >= 2 && files.len() < 3 {
        let n = (u16::from_le_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        if let Some(h) = header(&rest[2..2 + n]) {
            files.push(h);
        }
        rest = &rest[2 + n..];
    }
    let Some((newest, older)) = files.split_first() else {
        return;
    };
    let full_size = full_blocks as u64 * BLCKSZ;
    let mut versions: Vec<Version<'_>> = older.iter().map(Version::Incremental).collect();
    versions.push(Version::Full { size: full_size });
    let Ok(p) = plan(newest, &versions) else {
        return;
    };
    let sizes: Vec<u64> = std::iter::once(newest.file_size())
        .chain(older.iter().map(IncrementalHeader::file_size))
        .chain(std::iter::once(full_size))
        .collect();
    for b in &p.blocks {
        if let BlockSource::Backup { backup, offset } = *b {
            assert!(offset + BLCKSZ <= sizes[backup], "block beyond its file");
        }
    }
    if let Some(w) = p.whole_copy_of {
        assert_eq!(w, versions.len());
    }
});
