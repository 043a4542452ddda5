//! A CoAP datagram as a server or device receives it after DTLS
//! (iotpki_coap::msg): whatever decodes encodes back to the same bytes (the
//! codec accepts only the canonical forms) and decodes to the same message;
//! its header decodes alone; a client exchange takes it without panicking.
#![no_main]
use iotpki_coap::block::Block;
use iotpki_coap::client::Exchange;
use iotpki_coap::msg::{Code, Message};
use iotpki_coap::option;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let bytes = m.encode();
        assert_eq!(bytes, data);
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        let h = Message::decode_header(data).unwrap();
        assert_eq!((h.ty, h.code, h.message_id, &h.token), (m.ty, m.code, m.message_id, &m.token));
        for n in [option::BLOCK1, option::BLOCK2] {
            if let Some(Ok(b)) = m.option(n).map(Block::decode) {
                assert_eq!(Block::decode(&b.encode()).unwrap(), b);
            }
        }
    }
    let mut ex = Exchange::new(Code::POST, "/est/sen", Some(286), None, vec![1; 300], 4, 0, vec![]).unwrap();
    let _ = ex.receive(data);
    let _ = ex.datagram();
});
