//! Machine facts and pre-flight checks, with the real JDK and fake ones.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use apim_agent::exec::ExecError;
use apim_agent::exec::facts::{self, JavaFact, JavaVersionSource, Problem, Requirements};

use crate::tmp;

fn real_java_home() -> PathBuf {
    let java =
        std::fs::canonicalize("/usr/bin/java").expect("a JDK is installed on the build machines");
    java.parent().unwrap().parent().unwrap().to_path_buf()
}

fn write_script(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn facts_describe_this_machine_and_its_jdk() {
    let d = tmp();
    let root = d.path().join("not/yet/created");
    let f = facts::gather(&root, Some(&real_java_home())).await.unwrap();
    assert!(f.cpus >= 1);
    assert!(f.memory_total > 0 && f.memory_available <= f.memory_total);
    assert!(!f.hostname.is_empty() && !f.kernel.is_empty());
    assert_eq!(f.disk_measured_at, d.path());
    assert!(f.disk_free > 0 && f.disk_free <= f.disk_total);
    let JavaFact::Found(j) = &f.java else {
        panic!("{:?}", f.java)
    };
    assert_eq!(j.source, JavaVersionSource::JavaVersionOutput);
    assert!(j.major >= 11, "{j:?}");
    assert!(
        facts::preflight(
            &f,
            &Requirements {
                jdk_min: 11,
                jdk_max: 21,
                pack_size: 1 << 20,
                min_memory: 0
            }
        )
        .is_empty()
    );
}

#[tokio::test]
async fn java_version_from_output_or_release_file() {
    let d = tmp();
    let jdk11 = d.path().join("jdk11");
    write_script(
        &jdk11.join("bin/java"),
        "#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n",
    );
    let j = facts::java_version(&jdk11).await.unwrap();
    assert_eq!(
        (j.version.as_str(), j.major, j.source),
        ("11.0.22", 11, JavaVersionSource::JavaVersionOutput)
    );

    let jre8 = d.path().join("jre8");
    std::fs::create_dir_all(&jre8).unwrap();
    std::fs::write(
        jre8.join("release"),
        "JAVA_VERSION=\"1.8.0_392\"\nOS_NAME=\"Linux\"\n",
    )
    .unwrap();
    let j = facts::java_version(&jre8).await.unwrap();
    assert_eq!((j.major, j.source), (8, JavaVersionSource::ReleaseFile));
    assert!(j.run_error.is_some());

    let broken = d.path().join("broken");
    write_script(
        &broken.join("bin/java"),
        "#!/bin/sh\necho 'Error: could not find libjava.so' >&2\nexit 1\n",
    );
    assert!(matches!(
        facts::java_version(&broken).await,
        Err(ExecError::JavaProbe { .. })
    ));
}

#[tokio::test]
async fn preflight_lists_every_problem() {
    let d = tmp();
    let jre8 = d.path().join("jre8");
    std::fs::create_dir_all(&jre8).unwrap();
    std::fs::write(jre8.join("release"), "JAVA_VERSION=\"1.8.0_392\"\n").unwrap();
    let f = facts::gather(d.path(), Some(&jre8)).await.unwrap();
    let req = Requirements {
        jdk_min: 11,
        jdk_max: 21,
        pack_size: u64::MAX / 4,
        min_memory: u64::MAX,
    };
    let problems = facts::preflight(&f, &req);
    assert!(
        matches!(&problems[0], Problem::JavaUnsupported { found, min: 11, max: 21 } if found == "1.8.0_392")
    );
    assert!(matches!(&problems[1], Problem::DiskTooSmall { .. }));
    assert!(matches!(&problems[2], Problem::MemoryTooSmall { .. }));
    assert_eq!(problems.len(), 3);
    assert!(problems[1].to_string().contains("3 x pack size"));

    let missing = facts::gather(d.path(), Some(&d.path().join("nope")))
        .await
        .unwrap();
    let problems = facts::preflight(
        &missing,
        &Requirements {
            jdk_min: 11,
            jdk_max: 21,
            pack_size: 0,
            min_memory: 0,
        },
    );
    assert!(
        matches!(problems.as_slice(), [Problem::JavaMissing { .. }]),
        "{problems:?}"
    );
}
