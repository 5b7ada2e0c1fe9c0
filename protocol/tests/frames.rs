//! Round trips, golden examples and a property test over arbitrary input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use agentmesh_protocol::{
    close, decode_agent_frame, decode_hub_frame, AgentFrame, CommandStatus, DecodeError, HubFrame,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;
use serde_json::Value;

const LIMIT: usize = agentmesh_protocol::DEFAULT_MAX_MESSAGE_BYTES;

fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decoding a golden file and encoding it again gives the same JSON (as a value).
fn assert_golden_round_trip(name: &str) {
    let text = golden(name);
    let original: Value = serde_json::from_str(&text).unwrap();
    let encoded = if name.starts_with("agent_") {
        decode_agent_frame(text.as_bytes(), LIMIT)
            .unwrap()
            .to_json()
    } else {
        decode_hub_frame(text.as_bytes(), LIMIT).unwrap().to_json()
    };
    let reencoded: Value = serde_json::from_str(&encoded).unwrap();
    assert_eq!(original, reencoded, "{name} does not round-trip");
}

#[test]
fn golden_examples_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert_golden_round_trip(&name);
        seen += 1;
    }
    // Every frame type, plus a hello whose string parameter sets `allow_leading_dash`, a hello
    // with a nonce and a signed welcome.
    assert_eq!(seen, 17, "every frame type has a golden example");
}

#[test]
fn golden_hello_decodes_to_typed_fields() {
    let frame = decode_agent_frame(golden("agent_hello.json").as_bytes(), LIMIT).unwrap();
    let AgentFrame::Hello(hello) = frame else {
        panic!("not a hello")
    };
    assert_eq!(hello.protocol, PROTOCOL_VERSION);
    assert_eq!(hello.agent_id, "edge-01");
    assert_eq!(hello.labels["role"], "panel");
    assert_eq!(hello.verbs.len(), 2);
    assert!(hello.verbs[1].params["password"].secret);
}

#[test]
fn golden_hello_with_allow_leading_dash() {
    let frame =
        decode_agent_frame(golden("agent_hello_leading_dash.json").as_bytes(), LIMIT).unwrap();
    let AgentFrame::Hello(hello) = frame else {
        panic!("not a hello")
    };
    let verb = &hello.verbs[0];
    let args = serde_json::json!({"expr": "-v error", "file": "app.log"});
    verb.validate_args(args.as_object().unwrap()).unwrap();
    // The old golden hello has no such flag: `-` leading values stay refused there.
    let old = decode_agent_frame(golden("agent_hello.json").as_bytes(), LIMIT).unwrap();
    let AgentFrame::Hello(old) = old else {
        panic!("not a hello")
    };
    let args = serde_json::json!({"username": "-rf", "password": "x"});
    let err = old.verbs[1]
        .validate_args(args.as_object().unwrap())
        .unwrap_err();
    assert_eq!(err.param, "username");
}

#[test]
fn a_hello_with_an_oversized_pattern_decodes_and_names_the_unusable_verb() {
    let text =
        golden("agent_hello.json").replace(r#""^[a-z][a-z0-9_-]{2,31}$""#, r#""(\\w{100}){100}""#);
    let AgentFrame::Hello(hello) = decode_agent_frame(text.as_bytes(), LIMIT).unwrap() else {
        panic!("not a hello")
    };
    let unusable: Vec<_> = hello.unusable_verbs().collect();
    assert_eq!(unusable.len(), 1, "{unusable:?}");
    assert_eq!(unusable[0].0, "create_panel_user");
    assert_eq!(unusable[0].1.param, "username");
    // The golden hello itself is fine.
    let AgentFrame::Hello(ok) =
        decode_agent_frame(golden("agent_hello.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a hello")
    };
    assert_eq!(ok.unusable_verbs().count(), 0);
}

#[test]
fn a_hello_compiles_a_bounded_number_of_patterns() {
    use agentmesh_protocol::pattern::MAX_PATTERNS_PER_HELLO;
    let verbs: Vec<Value> = (0..MAX_PATTERNS_PER_HELLO + 2)
        .map(|i| {
            serde_json::json!({
                "name": format!("v{i:04}"),
                "params": {"p": {"type": "string", "pattern": "[a-z]+"}}
            })
        })
        .collect();
    let hello = serde_json::json!({
        "type": "hello", "protocol": 1, "agent_id": "edge-01", "verbs": verbs
    });
    let AgentFrame::Hello(hello) = decode_agent_frame(hello.to_string().as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a hello")
    };
    let unusable: Vec<&str> = hello.unusable_verbs().map(|(name, _)| name).collect();
    assert_eq!(
        unusable,
        [
            format!("v{MAX_PATTERNS_PER_HELLO:04}"),
            format!("v{:04}", MAX_PATTERNS_PER_HELLO + 1)
        ]
    );
    let args = serde_json::json!({"p": "abc"});
    let args = args.as_object().unwrap();
    hello.verbs[0].validate_args(args).unwrap();
    let err = hello.verbs[MAX_PATTERNS_PER_HELLO]
        .validate_args(args)
        .unwrap_err();
    assert!(err.reason.contains("more than"), "{err}");
}

#[test]
fn golden_proof_frames_decode_to_typed_fields() {
    use agentmesh_protocol::{proof, ChallengeFrame, ChallengeResponseFrame};
    let AgentFrame::Hello(hello) =
        decode_agent_frame(golden("agent_hello_nonce.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a hello")
    };
    assert!(proof::is_valid_nonce(hello.nonce.as_deref().unwrap()));
    let HubFrame::Welcome(welcome) =
        decode_hub_frame(golden("hub_welcome_signed.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a welcome")
    };
    assert!(welcome.challenge_follows);
    assert_eq!(
        proof::decode(welcome.hub_key.as_deref().unwrap())
            .unwrap()
            .len(),
        91
    );
    assert!(proof::decode(welcome.signature.as_deref().unwrap()).is_some());
    let HubFrame::Challenge(ChallengeFrame { nonce }) =
        decode_hub_frame(golden("hub_challenge.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a challenge")
    };
    assert!(proof::is_valid_nonce(&nonce));
    let AgentFrame::ChallengeResponse(ChallengeResponseFrame { signature }) =
        decode_agent_frame(golden("agent_challenge_response.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a challenge_response")
    };
    assert!(proof::decode(&signature).is_some());
}

#[test]
fn frames_of_the_design_contract_stay_unchanged_on_the_wire() {
    // An old hello (no nonce) and an unsigned welcome encode without the new fields.
    let AgentFrame::Hello(hello) =
        decode_agent_frame(golden("agent_hello.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a hello")
    };
    assert_eq!(hello.nonce, None);
    let HubFrame::Welcome(welcome) =
        decode_hub_frame(golden("hub_welcome.json").as_bytes(), LIMIT).unwrap()
    else {
        panic!("not a welcome")
    };
    let text = HubFrame::Welcome(welcome).to_json();
    for field in ["signature", "hub_key", "challenge_follows"] {
        assert!(!text.contains(field), "{text}");
    }
}

#[test]
fn golden_result_status() {
    let frame = decode_agent_frame(golden("agent_result_rejected.json").as_bytes(), LIMIT).unwrap();
    let AgentFrame::Result(result) = frame else {
        panic!("not a result")
    };
    assert_eq!(result.status, CommandStatus::Rejected);
    assert_eq!(result.error.unwrap().code, "rate_limited");
}

#[test]
fn unknown_fields_are_ignored() {
    let text = r#"{"type":"drain","reconnect_after_ms":5,"future_field":{"x":1}}"#;
    assert_eq!(
        decode_hub_frame(text.as_bytes(), LIMIT).unwrap(),
        HubFrame::Drain {
            reconnect_after_ms: 5
        }
    );
}

#[test]
fn bad_input_is_a_typed_error() {
    let cases: &[(&[u8], &str)] = &[
        (b"\xff\xfe", "not_utf8"),
        (b"not json", "not_json"),
        (b"[1,2]", "not_json"),
        (b"{}", "missing_type"),
        (br#"{"type": 7}"#, "missing_type"),
        (br#"{"type":"reboot"}"#, "unknown_type"),
        (br#"{"type":"welcome"}"#, "unknown_type"), // a hub frame sent by an agent
        (br#"{"type":"hello","protocol":"one"}"#, "invalid_frame"),
        (
            br#"{"type":"result","command_id":"x","status":"exploded"}"#,
            "invalid_frame",
        ),
    ];
    for (input, code) in cases {
        let err = decode_agent_frame(input, LIMIT).unwrap_err();
        assert_eq!(
            err.code(),
            *code,
            "{:?}: {err}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = vec![b' '; 65];
    assert_eq!(
        decode_agent_frame(&big, 64).unwrap_err(),
        DecodeError::TooLarge {
            size: 65,
            limit: 64
        }
    );
}

#[test]
fn close_codes_match_the_contract() {
    assert_eq!(close::UNAUTHORISED, 4001);
    assert_eq!(close::PROTOCOL_ERROR, 4002);
    assert_eq!(close::SUPERSEDED, 4003);
    assert_eq!(close::REVOKED, 4004);
    assert_eq!(close::GOING_AWAY, 1001);
    assert_eq!(close::MESSAGE_TOO_BIG, 1009);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_agent_frame(&bytes, LIMIT);
        let _ = decode_hub_frame(&bytes, LIMIT);
    }

    #[test]
    fn arbitrary_json_like_text_never_panics(s in r#"\{"type":"(hello|result|output|error|command|cancel|drain|welcome|challenge|challenge_response|x)"(,"[a-z_]{1,12}":("[^"]{0,8}"|-?[0-9]{1,20}|true|null|\[\]|\{\}))*\}"#) {
        let _ = decode_agent_frame(s.as_bytes(), LIMIT);
        let _ = decode_hub_frame(s.as_bytes(), LIMIT);
    }

    #[test]
    fn result_frames_round_trip(id in "[a-zA-Z0-9-]{1,40}", code in proptest::option::of(any::<i32>()),
                                out in ".{0,64}", ms in proptest::option::of(any::<u64>())) {
        let frame = AgentFrame::Result(agentmesh_protocol::ResultFrame {
            command_id: id, status: CommandStatus::Failed, exit_code: code, stdout: out,
            stderr: String::new(), truncated: false, started_at: None, duration_ms: ms, error: None, signature: None,
        });
        let back = decode_agent_frame(frame.to_json().as_bytes(), LIMIT).unwrap();
        prop_assert_eq!(frame, back);
    }
}
