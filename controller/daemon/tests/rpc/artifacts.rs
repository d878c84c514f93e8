//! Artifacts: verified atomic upload by an operator, resumable chunked fetch by an agent.

use apim_proto::v1::{
    FetchRequest, StatRequest, UploadChunk, UploadHeader, UploadResponse,
    artifact_service_client::ArtifactServiceClient,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Status};

use apim_testkit::controller::Controller as Harness;

const CHUNK: usize = 1000;

fn sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Uploads `data` announcing `header_sha`/`header_size`, in pieces of 700 bytes.
async fn upload(
    client: &mut ArtifactServiceClient<Channel>,
    data: &[u8],
    header_sha: &str,
    header_size: u64,
) -> Result<UploadResponse, Status> {
    let mut messages = Vec::new();
    for (i, piece) in data.chunks(700).enumerate() {
        messages.push(UploadChunk {
            header: (i == 0).then(|| UploadHeader {
                sha256: header_sha.into(),
                size: header_size,
                name: "wso2am-3.2.0.zip".into(),
            }),
            data: piece.to_vec(),
        });
    }
    client
        .upload(tokio_stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

async fn fetch_all(
    client: &mut ArtifactServiceClient<Channel>,
    sha: &str,
    offset: u64,
) -> Result<Vec<(u64, usize)>, Status> {
    fetch_range(client, sha, offset, 0).await
}

async fn fetch_range(
    client: &mut ArtifactServiceClient<Channel>,
    sha: &str,
    offset: u64,
    limit: u64,
) -> Result<Vec<(u64, usize)>, Status> {
    let mut stream = client
        .fetch(FetchRequest {
            sha256: sha.into(),
            offset,
            limit,
        })
        .await?
        .into_inner();
    let mut pieces = Vec::new();
    while let Some(chunk) = stream.message().await? {
        pieces.push((chunk.offset, chunk.data.len()));
    }
    Ok(pieces)
}

/// The artifacts stored besides the test plans' driver (every test controller holds it).
fn stored_files(h: &Harness) -> Vec<String> {
    let driver = apim_plan::digest(&apim_testkit::plans::mysql_driver_jar());
    let mut names: Vec<String> = std::fs::read_dir(h.state.artifacts().dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| *n != driver)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_verifies_before_storing_and_fetch_resumes_in_chunks() {
    let h = Harness::start_with(|c| c.chunk_size = CHUNK).await;
    let operator = h.operator_creds("alice");
    let mut op = ArtifactServiceClient::new(h.channel(Some(&operator)).await);
    let data = pack_of_size(4500);
    let digest = sha256(&data);

    // Wrong digest, short content, long content: refused, nothing stored (not even a temp).
    let wrong = sha256(b"something else");
    let status = upload(&mut op, &data, &wrong, data.len() as u64)
        .await
        .expect_err("digest mismatch");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let status = upload(&mut op, &data, &digest, data.len() as u64 + 1)
        .await
        .expect_err("short");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = upload(&mut op, &data, &digest, data.len() as u64 - 1)
        .await
        .expect_err("long");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = upload(&mut op, &data, "../../etc/passwd", data.len() as u64)
        .await
        .expect_err("bad digest syntax");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(stored_files(&h), Vec::<String>::new());

    // The real upload, then a repeat that is a no-op.
    let stored = upload(&mut op, &data, &digest, data.len() as u64)
        .await
        .expect("upload");
    assert_eq!(
        (stored.sha256.as_str(), stored.size, stored.already_present),
        (digest.as_str(), 4500, false)
    );
    assert_eq!(stored_files(&h), vec![digest.clone()]);
    assert_eq!(
        std::fs::read(h.state.artifacts().dir().join(&digest)).expect("stored"),
        data
    );
    let again = upload(&mut op, &data, &digest, data.len() as u64)
        .await
        .expect("repeat");
    assert!(again.already_present);

    // An agent may fetch only the packs its machine's specs name.
    let agent = h.agent_creds("vm-a");
    let another = pack_of_size(3000);
    let other = upload(&mut op, &another, &sha256(&another), another.len() as u64)
        .await
        .expect("upload another");
    h.state
        .set_desired_spec(spec_naming("vm-a", &[&digest, &sha256(b"unknown")]));
    let mut ag = ArtifactServiceClient::new(h.channel(Some(&agent)).await);
    let status = fetch_all(&mut ag, &other.sha256, 0)
        .await
        .expect_err("not in the spec");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );

    // It stats and fetches its own, from the start and from an offset.
    let size = ag
        .stat(StatRequest {
            sha256: digest.clone(),
        })
        .await
        .expect("stat")
        .into_inner()
        .size;
    assert_eq!(size, 4500);
    assert_eq!(
        fetch_all(&mut ag, &digest, 0).await.expect("fetch"),
        vec![
            (0, 1000),
            (1000, 1000),
            (2000, 1000),
            (3000, 1000),
            (4000, 500)
        ]
    );
    assert_eq!(
        fetch_all(&mut ag, &digest, 2500).await.expect("resume"),
        vec![(2500, 1000), (3500, 1000)]
    );
    assert_eq!(
        fetch_all(&mut ag, &digest, 4500).await.expect("at end"),
        vec![]
    );
    // A range (a zip's tail before its body): `limit` bytes from `offset`, clipped at the end.
    assert_eq!(
        fetch_range(&mut ag, &digest, 1500, 1200)
            .await
            .expect("range"),
        vec![(1500, 1000), (2500, 200)]
    );
    assert_eq!(
        fetch_range(&mut ag, &digest, 4000, 4096)
            .await
            .expect("tail"),
        vec![(4000, 500)]
    );
    let status = fetch_all(&mut ag, &digest, 4501)
        .await
        .expect_err("past end");
    assert_eq!(status.code(), Code::OutOfRange);
    let status = fetch_all(&mut ag, &sha256(b"unknown"), 0)
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    let status = ag
        .stat(StatRequest {
            sha256: "XYZ".into(),
        })
        .await
        .expect_err("bad digest");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Reassembling a resumed download gives the original bytes.
    let mut stream = ag
        .fetch(FetchRequest {
            sha256: digest.clone(),
            offset: 1234,
            limit: 0,
        })
        .await
        .expect("fetch")
        .into_inner();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        rest.extend_from_slice(&chunk.data);
    }
    assert_eq!(rest, data[1234..]);
    h.shutdown().await.expect("clean shutdown");
}

/// A spec for `machine` whose nodes use the packs `digests`.
fn spec_naming(machine: &str, digests: &[&str]) -> apim_proto::v1::MachineSpec {
    apim_proto::v1::MachineSpec {
        machine: machine.into(),
        generation: 1,
        nodes: digests
            .iter()
            .enumerate()
            .map(|(i, d)| apim_proto::v1::NodeSpec {
                name: format!("n{i}"),
                pack: Some(apim_proto::v1::ArtifactRef {
                    sha256: (*d).into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A zip pack (one stored file of varied bytes under `top/`) padded with a zip comment to
/// exactly `size` bytes.
fn pack_of_size(size: usize) -> Vec<u8> {
    use std::io::Write as _;
    let build = |comment: String| {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("top/data.bin", stored).expect("entry");
        let data: Vec<u8> = (0..size as u32 / 2).map(|i| (i * 7 % 251) as u8).collect();
        w.write_all(&data).expect("data");
        w.set_comment(comment).expect("comment");
        w.finish().expect("zip").into_inner()
    };
    let bare = build(String::new()).len();
    let padded = build("x".repeat(size - bare));
    assert_eq!(padded.len(), size);
    padded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_is_not_a_safe_pack_is_refused_and_not_stored() {
    use std::io::Write as _;
    let h = Harness::start().await;
    let operator = h.operator_creds("alice");
    let mut op = ArtifactServiceClient::new(h.channel(Some(&operator)).await);
    let traversal = {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file(
            "top/../../etc/passwd",
            zip::write::SimpleFileOptions::default(),
        )
        .expect("entry");
        w.write_all(b"root::0:0::/:/bin/sh").expect("data");
        w.finish().expect("zip").into_inner()
    };
    for (bytes, why) in [
        (traversal, "parent-directory"),
        (b"not a zip at all".to_vec(), "not a readable zip archive"),
    ] {
        let status = upload(&mut op, &bytes, &sha256(&bytes), bytes.len() as u64)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(why), "{}", status.message());
    }
    assert_eq!(stored_files(&h), Vec::<String>::new());
    h.shutdown().await.expect("clean shutdown");
}
