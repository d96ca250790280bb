//! Micro-benchmarks of the hot paths, in MB/s, in process and without a server: the tar
//! parser, the WAL decoder, and the manifest's CRC-32C and SHA-256 file checksums. Each is run
//! `rounds` times over the same in-memory input; the median is reported.

use std::time::Instant;

use ::basebackup::checksum::{ChecksumKind, FileHasher};
use ::basebackup::tar::{encode_header, EntryHeader, EntryKind, TarError, TarEvent, TarParser};
use pgwal::writer::{BlockSpec, RecordSpec, WalWriter};
use pgwal::{DecoderOptions, Lsn, TimelineId, WalDecoder, WalSegSize, WalVersion};

use crate::measure::median;

/// A tar of `files` files of `size` bytes each, as the server lays relation segments out.
fn make_tar(files: usize, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(files * (size + 512) + 1024);
    let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    for i in 0..files {
        let h = encode_header(&EntryHeader {
            path: format!("base/5/{}", 16384 + i),
            kind: EntryKind::File,
            mode: 0o600,
            size: size as u64,
            mtime: 0,
            link_target: None,
        })
        .expect("a short path encodes");
        out.extend_from_slice(&h);
        out.extend_from_slice(&body);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// About `bytes` of WAL: heap-insert-like records, one in 16 with a full-page image.
fn make_wal(bytes: usize) -> (Lsn, Vec<u8>) {
    let seg = WalSegSize::DEFAULT;
    let start = Lsn(16 << 20);
    let mut w = WalWriter::new(start, seg, TimelineId(1), 7, WalVersion::V18);
    let mut n = 0u32;
    let image: Vec<u8> = (0..8192).map(|i| (i % 253) as u8).collect();
    loop {
        let spec = RecordSpec {
            rmid: 10,
            info: 0,
            xid: 1000 + n,
            blocks: vec![BlockSpec {
                block: n,
                image: n.is_multiple_of(16).then(|| image.clone()),
                data: vec![7u8; 120],
                ..Default::default()
            }],
            main_data: vec![1, 2, 3],
        };
        let lsn = w.append(&spec);
        n += 1;
        if (lsn.0 - start.0) as usize >= bytes {
            break;
        }
    }
    let (_, out) = w.finish();
    (start, out)
}

fn rate(mb: f64, times: Vec<f64>) -> (f64, f64) {
    let t = median(times);
    (t, mb / t)
}

pub fn bench(rounds: usize) -> serde_json::Value {
    let mut json = Vec::new();
    let mut line = |name: &str, mb: f64, times: Vec<f64>| {
        let (t, r) = rate(mb, times);
        println!("micro {name:<24} {mb:>6.0} MB  median {t:.3}s  {r:>7.0} MB/s");
        json.push(serde_json::json!({"name": name, "mb": mb, "median_s": t, "mb_per_s": r}));
    };

    // 8 kB files (a catalog's worth of small relations): header parsing dominates; data of
    // larger files is handed on without a copy, so their rate only measures slicing
    let (files, size) = (32_768, 8192);
    let tar = make_tar(files, size);
    let mb = tar.len() as f64 / 1e6;
    let times = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            let mut p = TarParser::new();
            let mut data = 0usize;
            for chunk in tar.chunks(64 * 1024) {
                p.feed(chunk, |ev| -> Result<(), TarError> {
                    if let TarEvent::Data(d) = ev {
                        data += d.len();
                    }
                    Ok(())
                })
                .expect("the synthetic tar parses");
            }
            p.finish().expect("complete");
            assert_eq!(data, files * size);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    line("tar parse, 8 kB files", mb, times);

    let (start, wal) = make_wal(256 << 20);
    let mb = wal.len() as f64 / 1e6;
    let times = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            let mut d = WalDecoder::new(start, DecoderOptions::new(WalSegSize::DEFAULT))
                .expect("segment-aligned start");
            let mut records = 0u64;
            for chunk in wal.chunks(128 * 1024) {
                d.feed(chunk);
                while let Ok(Some(_)) = d.next_record() {
                    records += 1;
                }
            }
            assert!(records > 1000);
            t0.elapsed().as_secs_f64()
        })
        .collect();
    line("WAL decode (CRC checked)", mb, times);

    let buf: Vec<u8> = (0..(256usize << 20)).map(|i| (i % 241) as u8).collect();
    let mb = buf.len() as f64 / 1e6;
    for (name, kind) in [
        ("CRC-32C file checksum", ChecksumKind::Crc32c),
        ("SHA-256 file checksum", ChecksumKind::Sha256),
    ] {
        let times = (0..rounds)
            .map(|_| {
                let t0 = Instant::now();
                let mut h = FileHasher::new(kind);
                for chunk in buf.chunks(256 * 1024) {
                    h.update(chunk);
                }
                assert!(!h.finish().is_empty());
                t0.elapsed().as_secs_f64()
            })
            .collect();
        line(name, mb, times);
    }

    // age encryption of repository objects, one core: sealing as a streamed upload does, and
    // opening every chunk of the result
    let id = agefile::Identity::generate().expect("randomness");
    let times = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            let (mut e, mut out) =
                agefile::Encryptor::start(&[id.recipient()], "bench").expect("a recipient");
            for chunk in buf.chunks(1 << 20) {
                out.extend(e.push(chunk));
            }
            out.extend(e.finish());
            assert!(out.len() > buf.len());
            t0.elapsed().as_secs_f64()
        })
        .collect();
    line("age encrypt (1 core)", mb, times);
    let sealed = agefile::encrypt(&[id.recipient()], "bench", &buf).expect("a recipient");
    let ids = [id];
    let times = (0..rounds)
        .map(|_| {
            let t0 = Instant::now();
            let plain = agefile::decrypt(&sealed, &ids, "bench").expect("our own file");
            assert_eq!(plain.len(), buf.len());
            t0.elapsed().as_secs_f64()
        })
        .collect();
    line("age decrypt (1 core)", mb, times);
    serde_json::json!({"job": "micro", "rounds": rounds, "results": json})
}
