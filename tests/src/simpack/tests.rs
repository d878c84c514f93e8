//! Unit tests of the pack builder.

use super::*;

#[test]
fn filler_is_deterministic_sized_and_varied() {
    let mut a = Vec::new();
    let mut b = Vec::new();
    filler_text(&mut a, 10_000, 7);
    filler_text(&mut b, 10_000, 7);
    assert_eq!(a, b);
    assert_eq!(a.len(), 10_000);
    filler_text(&mut b, 10_000, 8);
    assert_ne!(a, b);
    let distinct: BTreeSet<&[u8]> = a.split(|c| *c == b' ').collect();
    assert!(
        distinct.len() > 100,
        "only {} distinct tokens",
        distinct.len()
    );
}

#[test]
fn filler_files_are_distinct_and_exact() {
    let mut pool = Vec::new();
    filler_text(&mut pool, 1 << 16, 1);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    filler_file(&pool, 1, 100_000, &mut a);
    filler_file(&pool, 2, 100_000, &mut b);
    assert_eq!(a.len(), 100_000);
    assert_ne!(a, b);
    filler_file(&pool, 3, 3, &mut a);
    assert_eq!(a, b"fil");
}

#[test]
fn tiny_archive_is_a_zip() {
    let bytes = tiny_archive("WEB-INF/web.xml", "x");
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip");
    let mut f = archive.by_name("WEB-INF/web.xml").expect("entry");
    let mut s = String::new();
    f.read_to_string(&mut s).expect("read");
    assert!(s.contains("x (simulated"));
}
