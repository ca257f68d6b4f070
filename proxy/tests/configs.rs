//! Every example in `configs/` loads, and `mcplb check` says so; a bad config is refused with
//! every problem listed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn configs_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs")
}

/// `mcplb check` on a config file.
fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

/// `mcplb check` on config text (written to a temporary file named after `name`).
fn check_text(name: &str, text: &str) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("mcplb-{name}-{}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    let out = check(&path);
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn every_example_config_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        n += 1;
        if let Err(e) = mcplb::Config::load(&path) {
            panic!("{}: {e}", path.display());
        }
        let out = check(&path);
        assert!(out.status.success(), "{}: {:?}", path.display(), out);
    }
    assert!(n >= 3, "expected at least three example configs, found {n}");
}

#[test]
fn check_lists_every_problem_and_fails() {
    let out = check_text(
        "bad",
        "[proxy]\nlisten = \"127.0.0.1:99999\"\nmax_body_bytes = -5\n\n[[servers]]\nname = \"x\"\npath = \"/mcp\"\nbackends = [\"tcp://nope\"]\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "proxy.listen",
        "proxy.max_body_bytes",
        "servers[0].backends[0]",
    ] {
        assert!(err.contains(key), "missing {key} in {err}");
    }
}

#[test]
fn a_bad_era_names_its_key_and_the_values() {
    let out = check_text(
        "era",
        "[[servers]]\nname = \"x\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\nera = \"2024\"\nera_bridge = \"yes\"\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected a boolean (line 5)"), "{err}");
    let out = check_text(
        "era",
        "[[servers]]\nname = \"x\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\nera = \"2024\"\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("servers[0].era: `2024` (use \"auto\", \"2025\" or \"2026\")"),
        "{err}"
    );
}

#[test]
fn demo_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["demo", "--exit"])
        .env("MCPLB_LOG", "error")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("(sticky)"), "{text}");
    assert!(text.contains("final result"), "{text}");
    assert!(text.contains("0 errors"), "{text}");
    assert!(text.contains("HTTP 404"), "{text}");
}

#[test]
fn check_lists_every_unknown_key_with_the_other_problems() {
    let out = check_text(
        "unknown",
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworker = 2\nmax_body_bytes = 0\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntokn = \"x\"\n\n\
         [[servers]]\nname = \"a\"\npath = \"/mcp\"\nbalanse = \"hash\"\n\
         backends = [\"http://127.0.0.1:1/mcp\", { command = [\"cat\"], nmae = \"c\" }]\n\
         [servers.health]\nintervall = \"1s\"\n\n\
         [[limits]]\nrate = 1\nbrust = 2\n\n[[concurrency]]\nmax = 1\nzzz = 1\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "invalid configuration (8 problem(s))",
        "proxy.worker: unknown key (did you mean `workers`?)",
        "admin.tokn: unknown key (did you mean `token`?)",
        "servers[0].balanse: unknown key (did you mean `balance`?)",
        "servers[0].backends[1].nmae: unknown key (did you mean `name`?)",
        "servers[0].health.intervall: unknown key (did you mean `interval`?)",
        "limits[0].brust: unknown key (did you mean `burst`?)",
        "concurrency[0].zzz: unknown key (keys here: server, method, tool,",
        "proxy.max_body_bytes: 0 is out of range",
    ] {
        assert!(err.contains(line), "missing {line:?} in {err}");
    }
}

#[test]
fn type_errors_name_their_key_path() {
    let out = check_text(
        "bad-type",
        "[[servers]]\nname = \"x\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\nconfirm_destructive = \"yes\"\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let want =
        "servers[0].confirm_destructive: invalid type: string \"yes\", expected a boolean (line 4)";
    assert!(err.contains(want), "missing {want:?} in {err}");
}

#[test]
fn policy_problems_name_their_key_path() {
    let out = check_text(
        "bad-policy",
        "[[servers]]\nname = \"x\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\npolicy_default = \"maybe\"\nlegacy_sse = true\n\
         [servers.auth]\napi_keys = [{ sha256 = \"zz\", identity = \"a\" }, { sha256 = \"ab\", identty = \"b\" }]\n\
         [[policies]]\nserver = \"nope\"\neffect = \"permit\"\ntools = []\n\
         [[policies]]\nidentities = [\"\"]\nmethod = [\"ping\"]\n\
         [audit]\narguments = \"some\"\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "servers[0].policy_default: `maybe`",
        "servers[0].auth.api_keys[0].sha256: missing or not 64 hex digits",
        "servers[0].auth.api_keys[1].identty: unknown key (did you mean `identity`?)",
        "policies[0].server: no [[servers]] group is named `nope`",
        "policies[0].effect: `permit` (use \"allow\", \"deny\" or \"confirm\")",
        "policies[0].tools: empty list",
        "policies[1].effect: missing",
        "policies[1].identities: an empty entry",
        "policies[1].method: unknown key (did you mean `methods`?)",
        "audit.arguments: `some` (use \"off\", \"hash\" or \"full\")",
        "audit.log: missing",
        "servers.x.legacy_sse: not with [[policies]] on the group",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn http3_needs_tls_and_a_listen_address() {
    let out = check_text(
        "http3",
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[proxy.http3]\nmax_concurrent_streams = 0\n\
         idle_timeout = \"2h\"\nlisen = \"x\"\n\n\
         [[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "proxy.http3: needs [proxy.tls]",
        "proxy.http3.listen: missing",
        "proxy.http3.max_concurrent_streams: 0 is out of range",
        "proxy.http3.idle_timeout: at most 1h",
        "proxy.http3.lisen: unknown key (did you mean `listen`?)",
    ] {
        assert!(err.contains(line), "missing {line:?} in {err}");
    }
}

#[test]
fn approval_problems_name_their_key_path() {
    let out = check_text(
        "bad-confirm",
        "[[servers]]\nname = \"x\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\nconfirm_timeout = \"soon\"\n\
         [[servers]]\nname = \"v\"\npath = \"/v\"\nconfirm_destructive = true\nmembers = [{ server = \"x\" }]\n",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "servers[0].confirm_timeout",
        "servers[1].confirm_destructive: not available on a virtual server",
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
}

#[test]
fn http2_limits_are_checked_by_key() {
    let out = check_text(
        "http2",
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[proxy.http2]\nmax_concurrent_streams = 0\n\
         initial_window_size = 100\nmax_ping_per_second = 5\n\n\
         [[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n",
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "proxy.http2.max_concurrent_streams: 0 is out of range",
        "proxy.http2.initial_window_size: 100 is out of range",
        "proxy.http2.max_ping_per_second: unknown key (did you mean `max_pings_per_second`?)",
    ] {
        assert!(err.contains(line), "missing {line:?} in {err}");
    }
}
