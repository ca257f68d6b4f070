//! Fuzzes `parse_message`: any bytes must give an envelope or an error, never
//! a panic, and whatever it borrows must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb_protocol::parse_message;

fuzz_target!(|data: &[u8]| {
    match parse_message(data) {
        Ok(env) => {
            if let Some(m) = env.method {
                let decoded = m.decode();
                assert!(m.eq_str(&decoded));
            }
            if let Some(n) = env.name {
                let _ = n.decode();
            }
            // A valid message is valid JSON.
            assert!(std::str::from_utf8(data).is_ok());
        }
        Err(e) => {
            let _ = (e.jsonrpc_code(), e.message());
            if let Some(id) = e.id_in(data) {
                assert!(!id.is_empty());
            }
        }
    }
});
