//! The decoder against WAL laid out by the test-side writer: every record comes back equal,
//! whatever the chunking, across page and segment boundaries; a flipped byte inside a record
//! stops decoding at that record's LSN.

use pgwal::writer::{BlockSpec, RecordSpec, WalWriter};
use pgwal::{
    DecoderOptions, Lsn, RelFileLocator, TimelineId, WalDecoder, WalErrorKind, WalSegSize,
    WalVersion,
};
use proptest::prelude::*;

fn seg() -> WalSegSize {
    WalSegSize::new(1 << 20).unwrap()
}

fn arb_block() -> impl Strategy<Value = BlockSpec> {
    (
        0u32..3,
        0u8..3,
        any::<u32>(),
        proptest::bool::weighted(0.05),
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(rel, fork, block, image, data)| BlockSpec {
            rlocator: RelFileLocator {
                spc_oid: 1663,
                db_oid: 5,
                rel_number: 16384 + rel,
            },
            fork,
            block,
            image: image.then(|| vec![0xAB; 8192]),
            data,
        })
}

fn arb_record() -> impl Strategy<Value = RecordSpec> {
    (
        prop_oneof![0u8..=21, 128u8..=255],
        any::<u8>(),
        any::<u32>(),
        proptest::collection::vec(arb_block(), 0..4),
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => proptest::collection::vec(any::<u8>(), 300..20000),
        ],
    )
        .prop_map(|(rmid, info, xid, blocks, main_data)| RecordSpec {
            // XLOG_SWITCH would end the segment; keep rmgr 0 away from it here
            info: if rmid == 0 && info & 0xF0 == 0x40 {
                info ^ 0x10
            } else {
                info
            },
            rmid,
            xid,
            blocks,
            main_data,
        })
}

fn write(records: &[RecordSpec]) -> (Lsn, Vec<u8>, Vec<Lsn>) {
    let mut w = WalWriter::new(Lsn(1 << 20), seg(), TimelineId(1), 4242, WalVersion::V18);
    let lsns = records.iter().map(|r| w.append(r)).collect();
    let (start, bytes) = w.finish();
    (start, bytes, lsns)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn records_round_trip(records in proptest::collection::vec(arb_record(), 1..120), chunk in 1usize..70000) {
        let (start, bytes, lsns) = write(&records);
        let mut d = WalDecoder::new(start, DecoderOptions::new(seg())).unwrap();
        let mut got = 0usize;
        for piece in bytes.chunks(chunk) {
            d.feed(piece);
            loop {
                match d.next_record() {
                    Ok(Some(r)) => {
                        let spec = &records[got];
                        prop_assert_eq!(r.lsn, lsns[got]);
                        prop_assert_eq!((r.rmid, r.info, r.xid), (spec.rmid, spec.info, spec.xid));
                        prop_assert_eq!(r.main_data(), &spec.main_data[..]);
                        prop_assert_eq!(r.blocks.len(), spec.blocks.len());
                        for (b, s) in r.blocks.iter().zip(&spec.blocks) {
                            prop_assert_eq!((b.rlocator, b.fork, b.block), (s.rlocator, s.fork, s.block));
                            prop_assert_eq!(r.block_data(b), &s.data[..]);
                            prop_assert_eq!(r.block_image(b), s.image.as_deref().unwrap_or(&[]));
                        }
                        if got > 0 {
                            prop_assert_eq!(r.prev_lsn, lsns[got - 1]);
                        }
                        got += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // only the zero padding after the last record may end decoding
                        prop_assert_eq!(got, records.len(), "stopped early: {}", e);
                        prop_assert!(matches!(e.kind, WalErrorKind::InvalidRecordLength { got: 0 }), "{}", e);
                        break;
                    }
                }
            }
        }
        prop_assert_eq!(got, records.len());
        prop_assert_eq!(d.system_id(), Some(4242));
        prop_assert_eq!(d.version(), Some(WalVersion::V18));
    }

    #[test]
    fn a_flipped_byte_fails_at_its_record(
        records in proptest::collection::vec(arb_record(), 2..40),
        pick in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (start, mut bytes, lsns) = write(&records);
        let victim = pick.index(records.len());
        let rec_len = records[victim].encode(Lsn::INVALID).len();
        // any byte after xl_tot_len (a corrupt length is caught where the record would end)
        let offset = 4 + at.index(rec_len - 4);
        // map the record offset to the stream, skipping page headers
        let mut pos = lsns[victim].0;
        let mut left = offset as u64;
        loop {
            let page_end = (pos / 8192 + 1) * 8192;
            if left < page_end - pos { pos += left; break; }
            left -= page_end - pos;
            pos = page_end + if page_end % (1 << 20) == 0 { 40 } else { 24 };
        }
        bytes[(pos - start.0) as usize] ^= 1 << bit;
        let mut d = WalDecoder::new(start, DecoderOptions::new(seg())).unwrap();
        d.feed(&bytes);
        let mut n = 0;
        let err = loop {
            match d.next_record() {
                Ok(Some(r)) => { prop_assert_eq!(r.lsn, lsns[n]); n += 1; }
                Ok(None) => panic!("no error after a flipped byte"),
                Err(e) => break e,
            }
        };
        prop_assert_eq!(n, victim, "{}", err);
        prop_assert_eq!(err.lsn, lsns[victim], "{}", err);
        if offset >= 24 {
            prop_assert_eq!(err.kind, WalErrorKind::BadCrc);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..20000), chunk in 1usize..5000) {
        let mut d = WalDecoder::new(Lsn(0), DecoderOptions::new(seg())).unwrap();
        for piece in data.chunks(chunk) {
            d.feed(piece);
            while let Ok(Some(_)) = d.next_record() {}
        }
    }
}

#[test]
fn a_record_crossing_a_segment_boundary() {
    // big records until the stream passes a segment boundary
    let big = RecordSpec {
        rmid: 10,
        info: 0,
        xid: 7,
        blocks: vec![],
        main_data: vec![0x5A; 100_000],
    };
    let records: Vec<RecordSpec> = std::iter::repeat_n(big, 12).collect();
    let (start, bytes, lsns) = write(&records);
    assert!(bytes.len() > 1 << 20);
    let crossing = lsns
        .iter()
        .zip(lsns.iter().skip(1))
        .any(|(a, b)| a.0 >> 20 != b.0 >> 20);
    assert!(crossing);
    let mut d = WalDecoder::new(start, DecoderOptions::new(seg())).unwrap();
    d.feed(&bytes);
    for l in &lsns {
        assert_eq!(d.next_record().unwrap().unwrap().lsn, *l);
    }
    // starting in the middle of the second segment's first page skips the continued record
    let second = Lsn(2 << 20);
    let mut d = WalDecoder::new(second, DecoderOptions::new(seg())).unwrap();
    d.feed(&bytes[(second.0 - start.0) as usize..]);
    let first = d.next_record().unwrap().unwrap().lsn;
    assert!(lsns.contains(&first) && first > second);
}

#[test]
fn foreign_system_and_wrong_version_are_refused() {
    let (start, bytes, _) = write(&[RecordSpec {
        rmid: 10,
        main_data: vec![1; 10],
        ..Default::default()
    }]);
    let mut o = DecoderOptions::new(seg());
    o.system_id = Some(1);
    let mut d = WalDecoder::new(start, o).unwrap();
    d.feed(&bytes);
    let e = d.next_record().unwrap_err();
    assert!(e.to_string().contains("different database system"), "{e}");
    let mut o = DecoderOptions::new(seg());
    o.version = Some(WalVersion::V17);
    let mut d = WalDecoder::new(start, o).unwrap();
    d.feed(&bytes);
    let e = d.next_record().unwrap_err();
    assert!(e.to_string().contains("PostgreSQL 18"), "{e}");
    assert_eq!(e.lsn, start);
}

/// A record whose length field claims hundreds of megabytes is judged by its header and its
/// continuation pages as they arrive (xlogreader.c's order), not after all of it is gathered.
#[test]
fn a_bogus_length_is_refused_before_its_bytes_are_gathered() {
    let (start, bytes, lsns) = write(&[
        RecordSpec {
            rmid: 10,
            main_data: vec![1; 10],
            ..Default::default()
        },
        RecordSpec {
            rmid: 10,
            main_data: vec![2; 10],
            ..Default::default()
        },
        RecordSpec {
            rmid: 10,
            main_data: vec![3; 20_000],
            ..Default::default()
        },
    ]);
    let second = (lsns[1].0 - start.0) as usize;
    let claim = |mutate: &dyn Fn(&mut [u8])| -> Result<(), pgwal::WalError> {
        let mut b = bytes.clone();
        b[second..second + 4].copy_from_slice(&(600u32 << 20).to_le_bytes());
        mutate(&mut b[second..]);
        let mut d = WalDecoder::new(start, DecoderOptions::new(seg())).unwrap();
        // two pages only, of the 600 MB the record claims
        d.feed(&b[..16384]);
        d.next_record()
            .unwrap()
            .expect("the first record is intact");
        match d.next_record() {
            Ok(None) => Ok(()),
            Ok(Some(_)) => panic!("a record was returned"),
            Err(e) => Err(e),
        }
    };
    // an invalid resource manager
    let e = claim(&|r| r[17] = 100).unwrap_err();
    assert_eq!((e.lsn, e.kind), (lsns[1], WalErrorKind::InvalidRmgr(100)));
    // a wrong previous-record link
    let e = claim(&|r| r[8] ^= 0x40).unwrap_err();
    assert_eq!(e.lsn, lsns[1]);
    assert!(
        matches!(e.kind, WalErrorKind::IncorrectPrevLink { .. }),
        "{e}"
    );
    // a valid header: the next page must then say it continues a record of that length
    let e = claim(&|_| {}).unwrap_err();
    assert_eq!(e.lsn, Lsn(start.0 + 8192));
    assert!(
        matches!(
            e.kind,
            WalErrorKind::MissingContrecord | WalErrorKind::InvalidContrecordLength { .. }
        ),
        "{e}"
    );
}
