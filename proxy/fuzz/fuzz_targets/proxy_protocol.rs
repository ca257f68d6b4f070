//! Fuzzes the PROXY protocol header parse (v1 and v2, from a trusted balancer): a complete
//! header parses the same alone and with bytes after it, every prefix of it is incomplete, an
//! incomplete verdict never passes the size bound, a refusal stays a refusal (see
//! `mcplb::internals::check_proxy_header`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcplb::internals;

fuzz_target!(|data: &[u8]| {
    // The first byte says where the bytes that follow the connection's start begin.
    let Some((cut, rest)) = data.split_first() else {
        return;
    };
    let at = usize::from(*cut).min(rest.len());
    let (buf, more) = rest.split_at(rest.len() - at);
    internals::check_proxy_header(buf, more);
});
