//! prost encoding of the machine spec, the descriptor set, `Debug` redaction and the
//! error-detail helpers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use apim_proto::prost::Message as _;
use apim_proto::prost_types::field_descriptor_proto::Type;
use apim_proto::prost_types::{DescriptorProto, FileDescriptorSet};
use apim_proto::v1::{
    self, ApplyRequest, ControllerMessage, CreateTokenResponse, DesiredSpec, EnrollRequest,
    ErrorDetail, ErrorDetails, MachineSpec, NodePhase, NodeStatus, PlanRequest, controller_message,
};

use super::sample;

/// Every message type of the descriptor set by fully-qualified name (".apimctl.v1.NodeSpec").
fn message_types() -> BTreeMap<String, DescriptorProto> {
    let fds = FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let mut out = BTreeMap::new();
    for file in fds.file {
        let package = file.package().to_string();
        for message in file.message_type {
            out.insert(format!(".{package}.{}", message.name()), message);
        }
    }
    out
}

/// Reads a base-128 varint from the front of `buf`.
fn varint(buf: &mut &[u8]) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().expect("truncated varint");
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint too long");
}

/// Walks the wire encoding of a message of type `type_name` and records, per message type, the
/// field numbers that are present. proto3 leaves default values off the wire, so a field that is
/// never seen was never set to a non-default value.
fn seen_fields(
    types: &BTreeMap<String, DescriptorProto>,
    type_name: &str,
    mut buf: &[u8],
    seen: &mut BTreeMap<String, BTreeSet<i32>>,
) {
    let descriptor = &types[type_name];
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let number = i32::try_from(key >> 3).expect("field number");
        seen.entry(type_name.to_string())
            .or_default()
            .insert(number);
        match key & 7 {
            0 => {
                varint(&mut buf);
            }
            1 => buf = &buf[8..],
            5 => buf = &buf[4..],
            2 => {
                let len = usize::try_from(varint(&mut buf)).expect("length");
                let (payload, rest) = buf.split_at(len);
                buf = rest;
                let field = descriptor
                    .field
                    .iter()
                    .find(|f| f.number() == number)
                    .unwrap_or_else(|| panic!("{type_name} has no field {number}"));
                if field.r#type() == Type::Message {
                    seen_fields(types, field.type_name(), payload, seen);
                }
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
}

#[test]
fn machine_spec_round_trips_every_field() {
    let spec = sample::machine_spec(7);
    let bytes = spec.encode_to_vec();
    let decoded = MachineSpec::decode(bytes.as_slice()).expect("decode");
    assert_eq!(decoded, spec);
    assert_eq!(decoded.nodes[1].keystores, None);
    assert_eq!(decoded.nodes[1].optimizer, None);

    // The sample really sets every field of every message reachable from MachineSpec (so the
    // equality above covers them all, including fields added to the .proto later).
    let types = message_types();
    let mut seen = BTreeMap::new();
    seen_fields(&types, ".apimctl.v1.MachineSpec", &bytes, &mut seen);
    let mut missing = Vec::new();
    for (type_name, present) in &seen {
        for field in &types[type_name].field {
            if !present.contains(&field.number()) {
                missing.push(format!("{type_name}.{}", field.name()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sample leaves fields unset: {missing:?}"
    );
    let expected_types: BTreeSet<&str> = [
        "MachineSpec",
        "HostsEntry",
        "NodeSpec",
        "ArtifactRef",
        "CommandSpec",
        "EnvVar",
        "Readiness",
        "HttpProbe",
        "KeystoreSpec",
        "TrustedCert",
        "ProvidedStores",
        "ServerProcess",
        "NodeFile",
        "LibJar",
        "DatabaseUse",
        "DatabaseInit",
        "ManagedService",
        "ServiceFile",
        "ServiceProbe",
        "SharedFolders",
        "SyncedFolders",
        "SharedMount",
    ]
    .into_iter()
    .collect();
    let visited: BTreeSet<&str> = seen
        .keys()
        .map(|k| k.trim_start_matches(".apimctl.v1."))
        .collect();
    assert_eq!(visited, expected_types);
}

#[test]
fn desired_spec_message_round_trips_inside_the_oneof() {
    let msg = ControllerMessage {
        kind: Some(controller_message::Kind::DesiredSpec(DesiredSpec {
            spec: Some(sample::machine_spec(3)),
        })),
    };
    let decoded = ControllerMessage::decode(msg.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(decoded, msg);
}

#[test]
fn node_status_keeps_phase_pid_and_timestamp() {
    let status = NodeStatus {
        node: "gw-1".into(),
        phase: NodePhase::Healthy.into(),
        step: "readiness passed".into(),
        generation: 9,
        last_error: String::new(),
        phase_since: Some(sample::timestamp()),
        restarts: 2,
        pid: Some(0),
        config_digest: "ef".repeat(32),
        running: true,
        plan_generation: 4,
        drift: vec![v1::Drift {
            file: "repository/conf/deployment.toml".into(),
            problem: "changed".into(),
            added_keys: vec!["server.extra".into()],
            removed_keys: vec![],
            changed_keys: vec!["server.offset".into()],
            omitted_keys: 0,
        }],
        shared: "gateway/Default: in step at revision 7".into(),
    };
    let decoded = NodeStatus::decode(status.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(decoded, status);
    assert_eq!(decoded.phase(), NodePhase::Healthy);
    // proto3 `optional`: a pid of 0 is still distinguishable from "not running".
    assert_eq!(decoded.pid, Some(0));
    let not_running = NodeStatus {
        pid: None,
        ..status
    };
    let decoded = NodeStatus::decode(not_running.encode_to_vec().as_slice()).expect("decode");
    assert_eq!(decoded.pid, None);
}

#[test]
fn descriptor_set_describes_all_four_services() {
    let fds = FileDescriptorSet::decode(v1::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let services: BTreeSet<String> = fds
        .file
        .iter()
        .filter(|f| f.package() == "apimctl.v1")
        .flat_map(|f| f.service.iter().map(|s| s.name().to_string()))
        .collect();
    let expected: BTreeSet<String> = [
        "AgentService",
        "ArtifactService",
        "Enrollment",
        "OperatorService",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(services, expected);
}

/// Asserts `text` shows none of the sample's secret bytes, as text or as a `Debug` byte list.
fn assert_no_bytes(text: &str) {
    for bytes in sample::SECRET_BYTES {
        let as_list = format!("{:?}", bytes.to_vec());
        let as_text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains(&as_list[1..as_list.len() - 1]) && !text.contains(&*as_text),
            "secret bytes leaked: {text}"
        );
    }
}

#[test]
fn debug_output_redacts_secrets() {
    let spec_text = format!("{:?}", sample::machine_spec(1));
    for secret in sample::SECRETS {
        assert!(!spec_text.contains(secret), "{secret} leaked: {spec_text}");
    }
    // Non-secret content is still there, so logs stay useful.
    for visible in [
        "gw-1",
        "JAVA_OPTS",
        "-Xmx2g",
        "gateway_certificate_alias",
        "Pkcs12",
    ] {
        assert!(
            spec_text.contains(visible),
            "{visible} missing: {spec_text}"
        );
    }

    // The provided stores show their digests and sizes, never their bytes.
    assert_no_bytes(&spec_text);
    for visible in ["e1e1e1", "f1f1f1", "<redacted 21 bytes>"] {
        assert!(
            spec_text.contains(visible),
            "{visible} missing: {spec_text}"
        );
    }

    let files = HashMap::from([
        ("certs/ks.p12".to_string(), sample::SECRET_BYTES[0].to_vec()),
        ("certs/ts.p12".to_string(), sample::SECRET_BYTES[1].to_vec()),
    ]);
    let apply = ApplyRequest {
        plan_toml: "[admin]\npassword = \"literal-s3cret\"\n".into(),
        plan_path: "plan.toml".into(),
        expected_cluster_revision: Some("rev-1".into()),
        author: "ops".into(),
        strict: true,
        resolved_secrets: HashMap::from([(
            "env:APIM_DB_PASSWORD".into(),
            "resolved-s3cret".into(),
        )]),
        provided_files: files.clone(),
    };
    let plan = PlanRequest {
        plan_toml: apply.plan_toml.clone(),
        plan_path: "plan.toml".into(),
        resolved_secrets: apply.resolved_secrets.clone(),
        strict: false,
        provided_files: files,
    };
    for text in [format!("{apply:?}"), format!("{plan:?}")] {
        assert!(
            !text.contains("literal-s3cret") && !text.contains("resolved-s3cret"),
            "{text}"
        );
        assert_no_bytes(&text);
        for visible in [
            "env:APIM_DB_PASSWORD",
            "plan.toml",
            "\"certs/ks.p12\": <redacted 21 bytes>",
            "\"certs/ts.p12\": <redacted 23 bytes>",
        ] {
            assert!(text.contains(visible), "{visible} missing: {text}");
        }
    }

    let enroll = EnrollRequest {
        token: "join-token-s3cret".into(),
        machine: "vm-gw-1".into(),
        csr_der: vec![0x30; 300],
    };
    let text = format!("{enroll:?}");
    assert!(
        !text.contains("join-token-s3cret") && text.contains("<300 bytes>"),
        "{text}"
    );

    let token = CreateTokenResponse {
        token: "join-token-s3cret".into(),
        expires_at: Some(sample::timestamp()),
    };
    assert!(!format!("{token:?}").contains("join-token-s3cret"));
}

#[test]
fn error_details_survive_a_status() {
    let details = ErrorDetails {
        errors: vec![ErrorDetail {
            code: "plan.unknown_machine".into(),
            message: "node km-1 names machine vm-x, which is not declared".into(),
            hint: "did you mean vm-km?".into(),
            file: "plan.toml".into(),
            line: 31,
            column: 11,
            field_path: "nodes[0].machine".into(),
        }],
    };
    let status =
        apim_proto::status_with_details(tonic::Code::InvalidArgument, "invalid plan", &details);
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "invalid plan");
    assert_eq!(apim_proto::error_details(&status), Some(details));
    assert_eq!(
        apim_proto::error_details(&tonic::Status::not_found("plain")),
        None
    );
}
