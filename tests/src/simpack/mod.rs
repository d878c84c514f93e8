//! Builder of simulated WSO2 API Manager distributions (zips laid out like the real packs).
//!
//! The agent under test fetches, verifies, unpacks, optimizes, configures and starts these
//! packs exactly as it would the real ones: same zip and top-directory names, same scripts and
//! their contract, real keystores, the webapps `profileSetup.sh` deletes. The server itself is
//! the `apim-simjava` binary behind a fake JDK (see [`crate::fakejdk`]).

pub mod catalogue;
pub mod dbscripts;
mod keystores;
mod layout;
mod scripts;
mod tomls;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::ZipWriter;
use zip::write::SimpleFileOptions;

pub use catalogue::Catalogue;
pub use dbscripts::{APIM_DB_TABLES, SHARED_DB_TABLES, driver_jar};
pub use keystores::{DEFAULT_STORE_PASSWORD, find_keytool};
pub use layout::{GATEWAY_WAR, PackKind, PackLayout, Release, StoreFormat, is_key_manager_profile};

/// Errors from building a pack; each names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum SimPackError {
    /// A version string that is not `major.minor.patch` of a known release line.
    #[error("unknown WSO2 API Manager version {version:?} (expected 3.2.x or 4.0.x and later)")]
    BadVersion {
        /// The rejected version.
        version: String,
    },
    /// A split pack requested for a release that had only the all-in-one pack.
    #[error("{kind} packs exist only from 4.5.0 on, not for {version}")]
    UnsupportedVersion {
        /// The requested kind.
        kind: PackKind,
        /// The requested version.
        version: String,
    },
    /// No JDK `keytool` was found to make the keystores with.
    #[error("no keytool found (set JAVA_HOME or PATH, or PackOptions::keytool)")]
    KeytoolNotFound,
    /// keytool could not be started.
    #[error("cannot run {keytool}: {source}")]
    KeytoolSpawn {
        /// The keytool path tried.
        keytool: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// keytool ran and failed.
    #[error("keytool {args:?} failed with status {status:?}: {output}")]
    Keytool {
        /// Its arguments (no secrets: passwords go through the environment).
        args: Vec<String>,
        /// Exit code, if it exited normally.
        status: Option<i32>,
        /// What it printed.
        output: String,
    },
    /// A file-system operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the zip failed.
    #[error("writing zip {path}: {source}")]
    Zip {
        /// The zip being written.
        path: PathBuf,
        /// The zip library's error.
        source: zip::result::ZipError,
    },
}

/// Padding that makes a pack as large as a real one (a real pack is ~200 MB in ~10,000 files),
/// for transfer and unpack benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filler {
    /// Number of filler files (placed as plugin jars under `repository/components/plugins/`).
    pub files: usize,
    /// Total uncompressed bytes spread over those files.
    pub bytes: u64,
}

/// Malicious entries to append to a pack, for the agent's unpack guards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvilEntry {
    /// A file whose name climbs out of the extraction dir: `<top>/../../apim-evil-traversal.txt`.
    ParentTraversal,
    /// A file with an absolute name: `/tmp/apim-evil-absolute.txt`.
    AbsolutePath,
    /// A symlink `<top>/repository/logs/escape` whose target climbs out of the extraction dir.
    SymlinkOutside,
    /// A symlink `<top>/repository/conf/link` -> `/tmp`, then a file written through it.
    SymlinkThenWrite,
}

impl EvilEntry {
    /// Every evil entry kind.
    pub const ALL: [EvilEntry; 4] = [
        EvilEntry::ParentTraversal,
        EvilEntry::AbsolutePath,
        EvilEntry::SymlinkOutside,
        EvilEntry::SymlinkThenWrite,
    ];

    /// The zip entries this adds for a pack with top directory `top`: (name, symlink target).
    pub fn entries(self, top: &str) -> Vec<(String, Option<String>)> {
        match self {
            EvilEntry::ParentTraversal => {
                vec![(format!("{top}/../../apim-evil-traversal.txt"), None)]
            }
            EvilEntry::AbsolutePath => vec![("/tmp/apim-evil-absolute.txt".to_string(), None)],
            EvilEntry::SymlinkOutside => vec![(
                format!("{top}/repository/logs/escape"),
                Some("../../../../apim-evil-outside".to_string()),
            )],
            EvilEntry::SymlinkThenWrite => vec![
                (
                    format!("{top}/repository/conf/link"),
                    Some("/tmp".to_string()),
                ),
                (
                    format!("{top}/repository/conf/link/apim-evil-through-link.txt"),
                    None,
                ),
            ],
        }
    }
}

/// How to build a pack beyond kind and version.
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// Pad the pack to a realistic size.
    pub filler: Option<Filler>,
    /// Append malicious entries (the pack is otherwise normal).
    pub evil: Vec<EvilEntry>,
    /// The keytool to use; default: [`find_keytool`].
    pub keytool: Option<PathBuf>,
}

/// What was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// The zip file (`<out_dir>/<top_dir>.zip`).
    pub path: PathBuf,
    /// Lower-case hex sha256 of the zip, as an operator would put in the plan.
    pub sha256: String,
    /// Zip size in bytes.
    pub size: u64,
    /// The single top directory inside the zip (same as the zip name).
    pub top_dir: String,
}

enum Body {
    File { data: Vec<u8>, mode: u32 },
    Dir,
}

struct Entries {
    items: Vec<(String, Body)>,
}

impl Entries {
    fn file(&mut self, path: impl Into<String>, data: impl Into<Vec<u8>>) {
        self.items.push((
            path.into(),
            Body::File {
                data: data.into(),
                mode: 0o644,
            },
        ));
    }
    fn exec(&mut self, path: impl Into<String>, data: impl Into<Vec<u8>>) {
        self.items.push((
            path.into(),
            Body::File {
                data: data.into(),
                mode: 0o755,
            },
        ));
    }
    fn dir(&mut self, path: impl Into<String>) {
        self.items.push((path.into(), Body::Dir));
    }
    fn text(&mut self, path: &str, what: &str) {
        self.file(path, format!("<!-- {what} (simulated distribution) -->\n"));
    }
}

/// Builds `<out_dir>/<top>.zip` for `kind` at `version` and returns where it is and its digest.
pub fn build_pack(
    kind: PackKind,
    version: &str,
    out_dir: &Path,
    opts: &PackOptions,
) -> Result<PackInfo, SimPackError> {
    let layout = PackLayout::new(kind, version)?;
    let keytool = match &opts.keytool {
        Some(k) => k.clone(),
        None => find_keytool().ok_or(SimPackError::KeytoolNotFound)?,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SimPackError::Io { path, source }
    };
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let work = tempfile::Builder::new()
        .prefix(".simpack-")
        .tempdir_in(out_dir)
        .map_err(io(out_dir))?;
    let stores = keystores::keystores_for(&keytool, layout.store_format, work.path())?;
    let entries = pack_entries(&layout, &stores)?;

    let final_path = out_dir.join(format!("{}.zip", layout.top_dir));
    let tmp_path = work.path().join("pack.zip");
    let zerr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SimPackError::Zip { path, source }
    };
    {
        let file = File::create(&tmp_path).map_err(io(&tmp_path))?;
        let mut zip = ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut dirs = BTreeSet::new();
        let top = &layout.top_dir;
        add_dir(&mut zip, &mut dirs, top).map_err(zerr(&tmp_path))?;
        for (path, body) in &entries.items {
            let full = format!("{top}/{path}");
            match body {
                Body::Dir => add_dir(&mut zip, &mut dirs, &full).map_err(zerr(&tmp_path))?,
                Body::File { data, mode } => {
                    add_parents(&mut zip, &mut dirs, &full).map_err(zerr(&tmp_path))?;
                    zip.start_file(full.as_str(), file_opts(*mode))
                        .map_err(zerr(&tmp_path))?;
                    zip.write_all(data).map_err(io(&tmp_path))?;
                }
            }
        }
        if let Some(filler) = opts.filler {
            write_filler(&mut zip, &mut dirs, top, filler, &tmp_path)?;
        }
        for evil in &opts.evil {
            for (name, target) in evil.entries(top) {
                match target {
                    Some(t) => zip.add_symlink(name, t, base_opts()),
                    None => zip
                        .start_file(name, file_opts(0o644))
                        .and_then(|()| Ok(zip.write_all(b"written outside the staging area\n")?)),
                }
                .map_err(zerr(&tmp_path))?;
            }
        }
        let writer = zip.finish().map_err(zerr(&tmp_path))?;
        let file = writer.into_inner().map_err(|e| SimPackError::Io {
            path: tmp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp_path))?;
    }
    let (sha256, size) = digest(&tmp_path)?;
    std::fs::rename(&tmp_path, &final_path).map_err(io(&final_path))?;
    Ok(PackInfo {
        path: final_path,
        sha256,
        size,
        top_dir: layout.top_dir,
    })
}

/// Every entry gets the same plausible build time, so packs are byte-for-byte reproducible
/// (apart from the keystores) without looking like 1980.
fn base_opts() -> SimpleFileOptions {
    let built = zip::DateTime::from_date_and_time(2024, 5, 2, 10, 30, 0).unwrap_or_default();
    SimpleFileOptions::default().last_modified_time(built)
}

fn file_opts(mode: u32) -> SimpleFileOptions {
    base_opts().unix_permissions(mode)
}

fn add_parents<W: Write + std::io::Seek>(
    zip: &mut ZipWriter<W>,
    dirs: &mut BTreeSet<String>,
    path: &str,
) -> Result<(), zip::result::ZipError> {
    if let Some((parent, _)) = path.rsplit_once('/') {
        add_dir(zip, dirs, parent)?;
    }
    Ok(())
}

fn add_dir<W: Write + std::io::Seek>(
    zip: &mut ZipWriter<W>,
    dirs: &mut BTreeSet<String>,
    path: &str,
) -> Result<(), zip::result::ZipError> {
    if dirs.contains(path) {
        return Ok(());
    }
    add_parents(zip, dirs, path)?;
    zip.add_directory(path, base_opts().unix_permissions(0o755))?;
    dirs.insert(path.to_string());
    Ok(())
}

fn digest(path: &Path) -> Result<(String, u64), SimPackError> {
    let io = |source| SimPackError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// A small but valid `.war`/`.jar` (a zip with a descriptor naming the app).
fn tiny_archive(inner_path: &str, what: &str) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let body = format!("<!-- {what} (simulated distribution) -->\n");
    // Writing into memory cannot fail; fall back to an empty archive body if it somehow does.
    let written = zip
        .start_file(inner_path, file_opts(0o644))
        .and_then(|()| Ok(zip.write_all(body.as_bytes())?));
    match (written, zip.finish()) {
        (Ok(()), Ok(cursor)) => cursor.into_inner(),
        _ => body.into_bytes(),
    }
}

fn pack_entries(
    layout: &PackLayout,
    stores: &keystores::Keystores,
) -> Result<Entries, SimPackError> {
    let mut e = Entries { items: Vec::new() };
    let r = layout.release;
    let name = format!("{} {}", layout.product_name, layout.version);

    // top level
    e.file(
        "README.txt",
        format!("{name}\n\nSimulated distribution used by the apimctl end-to-end tests.\nStart it with bin/{}.\n", layout.main_script()),
    );
    e.file("LICENSE.txt", "Apache License, Version 2.0\n");

    // bin/
    for script in &layout.scripts {
        e.exec(
            format!("bin/{script}"),
            scripts::start_script(layout, script),
        );
    }
    if layout.profile_setup {
        e.exec("bin/profileSetup.sh", scripts::profile_setup(layout));
    }
    e.exec("bin/ciphertool.sh", scripts::ciphertool_script(layout));
    e.file(
        format!("lib/{}", scripts::CIPHERTOOL_JAR),
        tiny_archive("META-INF/MANIFEST.MF", "cipher tool"),
    );
    if r >= Release::V4_4 {
        e.exec("bin/fips.sh", scripts::noop_script("FIPS mode helper"));
        e.exec(
            "diagnostics-tool/bin/diagnostics.sh",
            scripts::noop_script("diagnostics tool"),
        );
    }
    e.file(
        "bin/version.txt",
        format!("{} v{}\n", layout.product_name, layout.version),
    );
    e.file(
        "bin/wso2carbon-version.txt",
        format!("WSO2 Carbon Framework v{}\n", layout.kernel_version),
    );
    e.file(
        "bin/README.txt",
        "Start scripts. Run '<script> --help' for the commands.\n",
    );
    e.file(
        format!(
            "bin/org.wso2.carbon.bootstrap-{}.jar",
            layout.kernel_version
        ),
        tiny_archive("META-INF/MANIFEST.MF", "bootstrap"),
    );
    e.file(
        "bin/tomcat-juli-9.0.58.jar",
        tiny_archive("META-INF/MANIFEST.MF", "juli"),
    );
    e.text("lib/tomcat/conf/web.xml", "tomcat web.xml");

    // repository/conf
    e.file(
        "repository/conf/deployment.toml",
        tomls::default_deployment_toml(layout),
    );
    e.text("repository/conf/carbon.xml", "generated from carbon.xml.j2");
    e.text(
        "repository/conf/axis2/axis2.xml",
        "generated from axis2.xml.j2",
    );
    e.text(
        "repository/conf/axis2/axis2_blocking_client.xml",
        "generated from axis2_blocking_client.xml.j2",
    );
    e.file(
        "repository/conf/log4j2.properties",
        "appenders = CARBON_CONSOLE, CARBON_LOGFILE\n\
         appender.CARBON_LOGFILE.fileName = ${sys:carbon.home}/repository/logs/wso2carbon.log\n\
         appender.CARBON_LOGFILE.layout.pattern = TID: [%tenantId] [%appName] [%d] %5p {%c} - %m%ex%n\n",
    );
    e.file(
        "repository/conf/security/cipher-text.properties",
        "# aliases and their encrypted values\n",
    );
    e.file(
        "repository/conf/security/cipher-tool.properties",
        "# keys the cipher tool encrypts\n",
    );

    // repository/resources/conf
    for json in ["validator.json", "unit-resolve.json"] {
        e.file(format!("repository/resources/conf/{json}"), "{}\n");
    }
    for (path, text) in catalogue::pack_files(layout) {
        e.file(path, text);
    }
    let t = "repository/resources/conf/templates/repository/conf";
    for f in [
        "axis2.xml.j2",
        "axis2_TM.xml.j2",
        "axis2_KM.xml.j2",
        "axis2_ControlPlane.xml.j2",
        "tenant-axis2.xml.j2",
        "tenant-axis2_KM.xml.j2",
        "tenant-axis2_ControlPlane.xml.j2",
        "axis2_blocking_client.xml.j2",
    ] {
        e.text(&format!("{t}/axis2/{f}"), &format!("template {f}"));
    }
    e.text(&format!("{t}/registry.xml.j2"), "template registry.xml.j2");
    e.text(
        &format!("{t}/registry_TM.xml.j2"),
        "template registry_TM.xml.j2",
    );
    e.text(
        &format!("{t}/tomcat/carbon/WEB-INF/web.xml.j2"),
        "template web.xml.j2",
    );
    e.text(
        &format!("{t}/tomcat/carbon/WEB-INF/web_TM_GW.xml.j2"),
        "template web_TM_GW.xml.j2",
    );
    let dt = "repository/resources/conf/templates/repository/deployment/server";
    for app in ["authenticationendpoint", "accountrecoveryendpoint"] {
        e.text(
            &format!("{dt}/webapps/{app}/WEB-INF/web.xml.j2"),
            &format!("template {app} web.xml.j2"),
        );
    }
    let has_synapse = layout.kind != PackKind::TrafficManager;
    if has_synapse {
        for ep in ["WebSocketInboundEndpoint", "SecureWebSocketInboundEndpoint"] {
            e.text(
                &format!("{dt}/synapse-configs/default/inbound-endpoints/{ep}.xml.j2"),
                &format!("template {ep}"),
            );
        }
    }
    for template in &layout.templates {
        e.file(
            format!("repository/resources/conf/deployment-templates/{template}.toml"),
            tomls::template_toml(layout, template),
        );
    }

    // repository/resources/security
    let sec = "repository/resources/security";
    e.file(format!("{sec}/wso2carbon.jks"), stores.keystore.clone());
    e.file(
        format!("{sec}/client-truststore.jks"),
        stores.truststore.clone(),
    );
    e.text(&format!("{sec}/sslprofiles.xml"), "SSL profiles");
    e.text(&format!("{sec}/listenerprofiles.xml"), "listener profiles");

    // repository/deployment/server
    let srv = "repository/deployment/server";
    for war in &layout.wars {
        e.file(
            format!("{srv}/webapps/{war}"),
            tiny_archive("WEB-INF/web.xml", war),
        );
    }
    for app in &layout.exploded_webapps {
        e.text(
            &format!("{srv}/webapps/{app}/WEB-INF/web.xml"),
            &format!("{app} descriptor"),
        );
        if matches!(*app, "publisher" | "devportal" | "admin") {
            e.file(
                format!("{srv}/webapps/{app}/site/public/conf/settings.json"),
                format!("{{\"app\": {{\"context\": \"/{app}\"}}}}\n"),
            );
        }
    }
    for app in &layout.jaggery_apps {
        e.file(
            format!("{srv}/jaggeryapps/{app}/site/public/conf/settings.json"),
            format!("{{\"app\": {{\"context\": \"/{app}\"}}}}\n"),
        );
    }
    let syn = format!("{srv}/synapse-configs/default");
    e.text(&format!("{syn}/synapse.xml"), "synapse definitions");
    if has_synapse {
        e.text(&format!("{syn}/registry.xml"), "synapse registry");
        for f in [
            "api/_TokenAPI_.xml",
            "api/_RevokeAPI_.xml",
            "api/_AuthorizeAPI_.xml",
        ] {
            e.text(&format!("{syn}/{f}"), f);
        }
        for f in ["sequences/main.xml", "sequences/fault.xml"] {
            e.text(&format!("{syn}/{f}"), f);
        }
        e.text(
            &format!("{syn}/proxy-services/WorkflowCallbackService.xml"),
            "workflow callback proxy",
        );
        for ep in ["WebSocketInboundEndpoint", "SecureWebSocketInboundEndpoint"] {
            e.text(&format!("{syn}/inbound-endpoints/{ep}.xml"), ep);
        }
    }
    if matches!(layout.kind, PackKind::AllInOne | PackKind::TrafficManager) {
        e.text(
            &format!("{srv}/executionplans/throttle_policy.siddhiql"),
            "throttle execution plan",
        );
        e.text(
            &format!("{srv}/eventpublishers/jmsEventPublisher.xml"),
            "JMS publisher",
        );
        e.text(
            &format!("{srv}/eventstreams/org.wso2.throttle.request.stream_1.0.0.json"),
            "request stream",
        );
    }

    // repository/components
    let comp = "repository/components";
    e.file(
        format!(
            "{comp}/plugins/org.wso2.carbon.core_{}.jar",
            layout.kernel_version
        ),
        tiny_archive("META-INF/MANIFEST.MF", "carbon core"),
    );
    e.file(
        format!("{comp}/plugins/org.wso2.carbon.apimgt.impl_9.0.0.jar"),
        tiny_archive("META-INF/MANIFEST.MF", "apimgt impl"),
    );
    e.dir(format!("{comp}/dropins"));
    e.dir(format!("{comp}/lib"));
    for profile in &layout.osgi_profiles {
        e.file(
            format!("{comp}/{profile}/configuration/org.eclipse.equinox.simpleconfigurator/bundles.info"),
            format!("#version=1\n# bundles of the {profile} profile\norg.wso2.carbon.core,{},../plugins/org.wso2.carbon.core_{}.jar,4,true\n", layout.kernel_version, layout.kernel_version),
        );
    }

    // dbscripts: the kernel's (shared database) and the API Manager's, in every pack
    for (path, text) in dbscripts::pack_scripts() {
        e.file(path, text);
    }
    e.dir("repository/logs");
    e.dir("repository/database");
    Ok(e)
}

/// Vocabulary for filler text: compresses like source/bytecode dumps (about 3–4x), not to nothing.
const WORDS: [&str; 64] = [
    "org",
    "wso2",
    "carbon",
    "apimgt",
    "gateway",
    "handler",
    "throttle",
    "policy",
    "key",
    "manager",
    "token",
    "oauth2",
    "jwt",
    "claim",
    "synapse",
    "axis2",
    "transport",
    "http",
    "https",
    "passthru",
    "listener",
    "sender",
    "event",
    "stream",
    "publisher",
    "receiver",
    "binary",
    "thrift",
    "siddhi",
    "execution",
    "plan",
    "registry",
    "cache",
    "tenant",
    "user",
    "store",
    "realm",
    "datasource",
    "jdbc",
    "pool",
    "keystore",
    "truststore",
    "alias",
    "cert",
    "bundle",
    "osgi",
    "service",
    "component",
    "activate",
    "deactivate",
    "reference",
    "config",
    "deployment",
    "toml",
    "template",
    "mapper",
    "resolver",
    "util",
    "impl",
    "internal",
    "dto",
    "model",
    "api",
    "version",
];

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Fills `buf` with `len` bytes of pseudo-random identifier text, deterministic per `seed`.
fn filler_text(buf: &mut Vec<u8>, len: usize, seed: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.clear();
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    while buf.len() < len {
        let r = rng.next();
        buf.extend_from_slice(WORDS[(r & 63) as usize].as_bytes());
        match (r >> 6) & 15 {
            0 => buf.push(b'\n'),
            1..=3 => buf.push(b'/'),
            4..=7 => buf.push(b'.'),
            8 => {
                buf.push(b'#');
                for shift in (12..44).step_by(4) {
                    buf.push(HEX[((r >> shift) & 15) as usize]);
                }
                buf.push(b' ');
            }
            _ => buf.push(b' '),
        }
    }
    buf.truncate(len);
}

/// Size of the shared text pool filler files are cut from.
const FILLER_POOL: usize = 4 << 20;

/// Content of filler file `i`: a header naming it, then a window of the pool chosen by `i`
/// (cheap to produce even for 200 MB; each file compresses on its own, so no cross-file gain).
fn filler_file(pool: &[u8], i: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(format!("filler {i}\n").as_bytes());
    let mut rng = XorShift((i + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1);
    while out.len() < len {
        let start = (rng.next() % pool.len() as u64) as usize;
        let take = (len - out.len()).min(pool.len() - start);
        out.extend_from_slice(&pool[start..start + take]);
    }
    out.truncate(len);
}

fn write_filler<W: Write + std::io::Seek>(
    zip: &mut ZipWriter<W>,
    dirs: &mut BTreeSet<String>,
    top: &str,
    filler: Filler,
    zip_path: &Path,
) -> Result<(), SimPackError> {
    if filler.files == 0 {
        return Ok(());
    }
    let zerr = |source| SimPackError::Zip {
        path: zip_path.to_path_buf(),
        source,
    };
    let dir = format!("{top}/repository/components/plugins");
    add_dir(zip, dirs, &dir).map_err(zerr)?;
    let n = filler.files as u64;
    let base = filler.bytes / n;
    let extra = filler.bytes % n;
    let mut pool = Vec::new();
    filler_text(&mut pool, FILLER_POOL, 0x5EED);
    let mut buf = Vec::new();
    for i in 0..n {
        let len = base + u64::from(i < extra);
        filler_file(&pool, i, len as usize, &mut buf);
        let name = format!("{dir}/org.wso2.sim.filler.b{:03}_1.0.{i}.jar", i % 997);
        // Fast deflate: filler exists for size, and level 1 still shrinks it about 2x.
        zip.start_file(name, file_opts(0o644).compression_level(Some(1)))
            .map_err(zerr)?;
        zip.write_all(&buf).map_err(|source| SimPackError::Io {
            path: zip_path.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
