//! How the start scripts size and configure the JVM, and what a server needs of its machine's
//! memory.
//!
//! Every start script (`wso2server.sh`, `api-manager.sh`, `api-cp.sh`, `key-manager.sh`,
//! `gateway.sh`, `traffic-manager.sh`) runs `$JAVACMD … $JVM_MEM_OPTS … $JAVA_OPTS …
//! org.wso2.carbon.bootstrap.Bootstrap`, with `JVM_MEM_OPTS` defaulting to `-Xms256m -Xmx1024m`
//! when unset (wso2_internals §7). Both variables are expanded unquoted, so the shell splits them
//! at white space; and since HotSpot takes the last occurrence of a flag, `-Xms`/`-Xmx` in
//! `JAVA_OPTS` win over the defaults.

/// The environment variable the start scripts add to the JVM's command line.
pub const JAVA_OPTS: &str = "JAVA_OPTS";

/// The scripts' default initial heap (`JVM_MEM_OPTS` `-Xms256m`).
pub const DEFAULT_HEAP_MIN: u64 = 256 * MIB;

/// The scripts' default maximum heap (`JVM_MEM_OPTS` `-Xmx1024m`): what a node whose plan says
/// nothing about its heap may grow to.
pub const DEFAULT_HEAP_MAX: u64 = 1024 * MIB;

/// The smallest heap size a plan may give (the scripts' own initial heap; API Manager does not
/// start in less).
pub const HEAP_FLOOR: u64 = 256 * MIB;

/// The largest heap size a plan may give (beyond it a value is a typo, e.g. `2t` for `2g`).
pub const HEAP_CEILING: u64 = 1024 * GIB;

/// What a JVM uses besides its heap, at least: metaspace (API Manager's several hundred OSGi
/// bundles take ~250–300 MiB of class metadata), the JIT's code cache (240 MiB reserved with
/// tiered compilation), thread stacks (hundreds of threads), and direct buffers of the
/// pass-through transports.
pub const NON_HEAP_BASE: u64 = 512 * MIB;

/// And a tenth of the heap on top, for the garbage collector's own structures (G1's remembered
/// sets and card tables grow with the heap).
pub const NON_HEAP_HEAP_DIVISOR: u64 = 10;

/// A mebibyte.
pub const MIB: u64 = 1 << 20;
/// A gibibyte.
pub const GIB: u64 = 1 << 30;

/// The memory a server with a `heap_max`-byte heap needs of its machine: the heap, plus
/// [`NON_HEAP_BASE`], plus a tenth of the heap.
pub fn memory_need(heap_max: u64) -> u64 {
    heap_max
        .saturating_add(NON_HEAP_BASE)
        .saturating_add(heap_max / NON_HEAP_HEAP_DIVISOR)
}

/// JVM options the plan may not pass in `options`, with the plan field that sets them instead:
/// the heap (the memory pre-flight counts `heap_max`), and what the catalogue owns (the OSGi
/// profile, the port offset, which `deployment.toml` sets).
pub const RESERVED_OPTIONS: [(&str, &str); 7] = [
    ("-Xmx", "`heap_max`"),
    ("-Xms", "`heap_min`"),
    ("-XX:MaxHeapSize=", "`heap_max`"),
    ("-XX:InitialHeapSize=", "`heap_min`"),
    ("-XX:MinHeapSize=", "`heap_min`"),
    (
        "-Dprofile=",
        "the node's `role` (apimctl passes the release's profile)",
    ),
    (
        "-DportOffset=",
        "the node's `offset` (written into deployment.toml)",
    ),
];

/// A heap size as the JVM takes it: `<digits><k|m|g|t>` (either case). Returns the bytes and the
/// text for `-Xms`/`-Xmx` (the digits and the unit in lower case); `None` for anything else
/// (no unit, a fraction, `2GB`, `2 g`).
pub fn parse_size(s: &str) -> Option<(u64, String)> {
    let unit = s.chars().last()?;
    let digits = &s[..s.len() - unit.len_utf8()];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let shift = match unit.to_ascii_lowercase() {
        'k' => 10,
        'm' => 20,
        'g' => 30,
        't' => 40,
        _ => return None,
    };
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(1u64 << shift)?;
    Some((bytes, format!("{n}{}", unit.to_ascii_lowercase())))
}

/// `-Xms<size>`.
pub fn heap_min_arg(size: &str) -> String {
    format!("-Xms{size}")
}

/// `-Xmx<size>`.
pub fn heap_max_arg(size: &str) -> String {
    format!("-Xmx{size}")
}

/// Bytes as MiB, for messages (rounded up).
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_the_jvm_reads_them() {
        assert_eq!(parse_size("2g"), Some((2 * GIB, "2g".into())));
        assert_eq!(parse_size("512M"), Some((512 * MIB, "512m".into())));
        assert_eq!(parse_size("1048576k"), Some((GIB, "1048576k".into())));
        for bad in [
            "",
            "g",
            "2",
            "1.5g",
            "2gb",
            "2 g",
            "-1g",
            "2x",
            "99999999999999999999g",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_need_is_the_heap_plus_a_margin() {
        // The scripts' default heap: 1024 + 512 + 102.4 MiB.
        assert_eq!(mib(memory_need(DEFAULT_HEAP_MAX)), 1639);
        assert_eq!(mib(memory_need(4 * GIB)), 4096 + 512 + 410);
        assert_eq!(memory_need(u64::MAX), u64::MAX);
    }
}
