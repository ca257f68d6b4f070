//! Parses `bench/quick/post.lua`'s 200-byte `tools/call` N times (default 10 000): a fixed
//! workload for counting the parser's instructions with callgrind on a busy machine.
//!
//! ```sh
//! cargo build --release -p mcplb-protocol --example parse_count
//! valgrind --tool=callgrind --callgrind-out-file=pc.out target/release/examples/parse_count 10000
//! callgrind_annotate pc.out | head -30   # divide by 10 000 for one parse
//! ```
fn main() {
    let body = br#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"query":"what is the weather in Paris today","limit":10},"_meta":{"progressToken":"tok-42"}}}"#;
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let mut read = 0usize;
    for _ in 0..n {
        if let Ok(e) = mcplb_protocol::parse_message(std::hint::black_box(&body[..])) {
            read += e.name.map_or(0, |n| n.raw().len());
        }
    }
    println!("{read}");
}
