//! Backend message framing and decoding: any bytes from a server.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(frame)) = pgrepl::message::parse_frame(&mut buf) {
        let _ = pgrepl::message::BackendMessage::decode(&frame);
    }
});
