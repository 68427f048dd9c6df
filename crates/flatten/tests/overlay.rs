//! The overlay rules, with neither root nor umoci: layers built in memory as
//! tar streams, flattened into an image, and the image read back with
//! `debugfs` (e2fsprogs, in user space) entry by entry. Each image passes
//! `e2fsck -fn` too.

use std::io::{BufRead, Cursor};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

/// One tar entry.
enum E {
    File(&'static str, &'static str),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
}

fn tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (path, data) = match e {
            E::File(p, d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                (*p, d.as_bytes())
            }
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (*p, &b""[..])
            }
            E::Symlink(p, t) | E::Hardlink(p, t) => {
                h.set_entry_type(if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_link_name(t).unwrap();
                (*p, &b""[..])
            }
        };
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Flattens `layers` (bottom first) into an image at `out`; checks it
/// with e2fsck.
fn flatten(layers: &[Vec<E>], out: &Path) -> builderd_flatten::Stats {
    flatten_adjusting(layers, None, out)
}

/// `flatten`, with `adjust` on the top layer.
fn flatten_adjusting(
    layers: &[Vec<E>],
    adjust: Option<Arc<builderd_flatten::Adjust>>,
    out: &Path,
) -> builderd_flatten::Stats {
    flatten_with(layers, adjust, None, out)
}

/// The layers as the flatten takes them, `adjust` on the top one.
fn layers_of(
    tars: &[Arc<Vec<u8>>],
    adjust: Option<Arc<builderd_flatten::Adjust>>,
) -> Vec<builderd_flatten::Layer<'static>> {
    let top = tars.len() - 1;
    tars.iter()
        .enumerate()
        .map(|(i, t)| {
            let t = t.clone();
            builderd_flatten::Layer {
                name: format!("layer{i}"),
                size: t.len() as u64,
                open: Box::new(move || {
                    Ok(Box::new(Cursor::new(t.to_vec())) as Box<dyn BufRead + Send>)
                }),
                adjust: if i == top { adjust.clone() } else { None },
            }
        })
        .collect()
}

/// `flatten`, with `adjust` on the top layer and `select` deciding.
fn flatten_with(
    layers: &[Vec<E>],
    adjust: Option<Arc<builderd_flatten::Adjust>>,
    select: Option<&dyn builderd_flatten::Select>,
    out: &Path,
) -> builderd_flatten::Stats {
    let tars: Vec<Arc<Vec<u8>>> = layers.iter().map(|l| Arc::new(tar(l))).collect();
    let layers = layers_of(&tars, adjust);
    let mut w = builderd_ext4::Writer::new(std::fs::File::create(out).unwrap(), Default::default())
        .unwrap();
    let stats = builderd_flatten::flatten(&layers, &mut w, select, &|_| {}).unwrap();
    w.finish().unwrap();
    let fsck = Command::new("e2fsck").arg("-fn").arg(out).output().unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    stats
}

fn debugfs(image: &Path, request: &str) -> (String, String) {
    let o = Command::new("debugfs")
        .args(["-R", request])
        .arg(image)
        .output()
        .expect("debugfs (e2fsprogs) is installed");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A file's content, or None when the image has no such path.
fn read(image: &Path, path: &str) -> Option<String> {
    let (out, err) = debugfs(image, &format!("cat {path}"));
    // debugfs names the path in its error (not found, not a directory).
    (!err.contains(&format!("{path}:"))).then_some(out)
}

/// A directory's entries, sorted (without . and ..).
fn list(image: &Path, dir: &str) -> Vec<String> {
    let (out, _) = debugfs(image, &format!("ls -p {dir}"));
    let mut names: Vec<String> = out
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

/// The inode number of a path.
fn inode(image: &Path, path: &str) -> String {
    debugfs(image, &format!("stat {path}"))
        .0
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn whiteouts_and_opaque_directories_hide_what_is_below() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    let stats = flatten(
        &[
            vec![
                E::Dir("a"),
                E::File("a/x", "x"),
                E::File("a/y", "y"),
                E::Dir("d"),
                E::File("d/old", "old"),
                E::Dir("d/sub"),
                E::File("d/sub/deep", "deep"),
            ],
            vec![
                E::File("a/.wh.x", ""),
                E::Dir("d"),
                E::File("d/.wh..wh..opq", ""),
                E::File("d/new", "new"),
            ],
        ],
        &img,
    );
    assert_eq!(list(&img, "/a"), ["y"]);
    assert_eq!(read(&img, "/a/x"), None);
    assert_eq!(list(&img, "/d"), ["new"]);
    assert_eq!(read(&img, "/d/new").as_deref(), Some("new"));
    assert_eq!(stats.whiteouts, 2);
    // Nothing of a whiteout itself is in the image.
    assert!(!list(&img, "/a").iter().any(|n| n.starts_with(".wh.")));
}

#[test]
fn a_file_replaces_a_directory_and_a_directory_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    flatten(
        &[
            vec![E::Dir("p"), E::File("p/inside", "i"), E::File("q", "file")],
            vec![
                E::File("p", "now a file"),
                E::Dir("q"),
                E::File("q/child", "c"),
            ],
        ],
        &img,
    );
    assert_eq!(read(&img, "/p").as_deref(), Some("now a file"));
    assert_eq!(read(&img, "/p/inside"), None);
    assert_eq!(list(&img, "/q"), ["child"]);
}

#[test]
fn a_hard_link_keeps_its_own_layers_content_when_its_target_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    let stats = flatten(
        &[
            vec![E::File("f", "lower"), E::Hardlink("link", "f")],
            vec![E::File("f", "upper")],
        ],
        &img,
    );
    assert_eq!(read(&img, "/f").as_deref(), Some("upper"));
    assert_eq!(read(&img, "/link").as_deref(), Some("lower"));
    assert_ne!(inode(&img, "/f"), inode(&img, "/link"));
    assert_eq!(stats.links_fixed, 1);

    // Unreplaced, the link and its target are one inode.
    let img = dir.path().join("same.ext4");
    flatten(&[vec![E::File("f", "one"), E::Hardlink("link", "f")]], &img);
    assert_eq!(inode(&img, "/f"), inode(&img, "/link"));
}

#[test]
fn an_entry_under_a_lower_symlink_goes_where_the_link_points() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    flatten(
        &[
            vec![E::Dir("real"), E::Symlink("p", "/real")],
            vec![E::File("p/file", "through")],
        ],
        &img,
    );
    assert_eq!(read(&img, "/real/file").as_deref(), Some("through"));
    assert_eq!(list(&img, "/real"), ["file"]);
}

#[test]
fn within_a_layer_the_last_entry_for_a_path_wins_and_upper_layers_win_over_lower() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    let stats = flatten(
        &[
            vec![
                E::File("v", "bottom"),
                E::File("w", "w1"),
                E::File("w", "w2"),
            ],
            vec![E::File("v", "top")],
        ],
        &img,
    );
    assert_eq!(read(&img, "/v").as_deref(), Some("top"));
    assert_eq!(read(&img, "/w").as_deref(), Some("w2"));
    assert!(stats.masked >= 1);
}

#[test]
fn an_adjusted_layer_drops_what_it_is_told_and_rewrites_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img.ext4");
    // The top layer as a build step leaves it: a placeholder over the
    // image's own file, and a new file whose owner is to be rewritten.
    let adjust: Arc<builderd_flatten::Adjust> = Arc::new(|path, meta| {
        if path == b"etc/hostname" {
            return false;
        }
        meta.uid = 7;
        true
    });
    flatten_adjusting(
        &[
            vec![E::Dir("etc"), E::File("etc/hostname", "base")],
            vec![E::File("etc/hostname", ""), E::File("etc/marker", "built")],
        ],
        Some(adjust),
        &img,
    );
    assert_eq!(read(&img, "/etc/hostname").as_deref(), Some("base"));
    assert_eq!(read(&img, "/etc/marker").as_deref(), Some("built"));
    let stat = debugfs(&img, "stat /etc/marker").0;
    assert!(stat.contains("User:     7"), "{stat}");
    // Lower layers are not adjusted.
    let stat = debugfs(&img, "stat /etc/hostname").0;
    assert!(stat.contains("User:     0"), "{stat}");
}

/// Verdicts by path, and what the flatten told back.
#[derive(Default)]
struct ByPath {
    told: std::sync::Mutex<Vec<(builderd_flatten::Verdict, String, u64)>>,
}

impl builderd_flatten::Select for ByPath {
    fn select(
        &self,
        path: &[u8],
        _kind: &builderd_import::EntryKind,
        _size: u64,
        meta: &mut builderd_ext4::Metadata,
    ) -> builderd_flatten::Verdict {
        use builderd_flatten::Verdict;
        match path {
            b"drop" | b"dropdir" | b"gone" => Verdict::Drop(3),
            p if p.starts_with(b"drop/") || p.starts_with(b"gone/") => Verdict::Drop(0),
            b"empty/f" | b"empty/link" => Verdict::Empty(1),
            p if p.starts_with(b"mode/") => {
                meta.mode = 0o600;
                Verdict::Change(2)
            }
            b"keep/listed" => Verdict::Note(4),
            _ => Verdict::Keep,
        }
    }

    fn applied(
        &self,
        verdict: builderd_flatten::Verdict,
        path: &[u8],
        size: u64,
        _meta: &builderd_ext4::Metadata,
    ) {
        self.told
            .lock()
            .unwrap()
            .push((verdict, String::from_utf8_lossy(path).into_owned(), size));
    }
}

#[test]
fn verdicts_leave_out_empty_and_change_entries_and_tell_only_the_final_trees() {
    use builderd_flatten::Verdict;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("i.ext4");
    let select = ByPath::default();
    flatten_with(
        &[
            vec![
                E::File("keep/a", "lower"),
                E::File("keep/listed", "n"),
                E::File("drop/x", "lower-x"),
                E::File("drop/y", "hidden by a whiteout"),
                E::Dir("dropdir"),
                E::File("dropdir/kept", "k"),
                E::Dir("gone"),
                E::File("gone/y", "y"),
                E::File("empty/f", "data"),
                E::File("mode/f", "m"),
                E::File("mode/g", "lower g"),
                // A link emptied by its own name; a link to content its
                // target's name drops goes with it.
                E::Hardlink("empty/link", "keep/a"),
                E::Hardlink("keep/to-dropped", "drop/x"),
            ],
            vec![E::File("drop/.wh.y", ""), E::File("mode/g", "upper g")],
        ],
        None,
        Some(&select),
        &img,
    );
    assert_eq!(read(&img, "keep/a").as_deref(), Some("lower"));
    assert_eq!(read(&img, "drop/x"), None);
    assert_eq!(read(&img, "dropdir/kept").as_deref(), Some("k"));
    assert!(
        list(&img, "/").iter().all(|n| n != "gone" && n != "drop"),
        "{:?}",
        list(&img, "/")
    );
    assert_eq!(read(&img, "empty/f").as_deref(), Some(""));
    let stat = |path: &str| debugfs(&img, &format!("stat {path}")).0;
    assert!(stat("empty/f").contains("Size: 0"), "{}", stat("empty/f"));
    assert!(stat("mode/f").contains("Mode:  0600"), "{}", stat("mode/f"));
    assert_eq!(read(&img, "mode/g").as_deref(), Some("upper g"));
    assert_eq!(read(&img, "empty/link").as_deref(), Some(""));
    assert_eq!(read(&img, "keep/a").as_deref(), Some("lower"));
    assert_eq!(read(&img, "keep/to-dropped"), None);
    let mut told = select.told.into_inner().unwrap();
    told.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        told,
        vec![
            // drop/ has no entry of its own: nothing made it.
            (Verdict::Drop(0), "drop/x".into(), 7),
            (Verdict::Empty(1), "empty/f".into(), 4),
            (Verdict::Empty(1), "empty/link".into(), 0),
            (Verdict::Drop(3), "gone".into(), 0),
            (Verdict::Drop(0), "gone/y".into(), 1),
            (Verdict::Note(4), "keep/listed".into(), 1),
            (Verdict::Change(2), "mode/f".into(), 1),
            // The upper version only; the masked one and the whited-out
            // drop/y are not the final tree's.
            (Verdict::Change(2), "mode/g".into(), 7),
        ]
    );
}

#[test]
fn files_are_read_from_the_final_tree_before_the_flatten() {
    use builderd_flatten::Found;
    let tars: Vec<Arc<Vec<u8>>> = [
        vec![
            E::File("db/status", "old"),
            E::File("db/info/a.list", "a"),
            E::File("db/info/b.list", "b"),
            E::Dir("db/gone"),
            E::File("db/gone/c.list", "c"),
            E::File("db/big", "0123456789"),
            E::Symlink("lib", "usr/lib"),
            E::File("other", "not asked for"),
            E::File("var/lib/db/x", "x"),
            E::File("var/cache/db/z", "hidden by an upper symlink"),
        ],
        vec![
            E::File("db/status", "new"),
            E::File("db/info/.wh.b.list", ""),
            E::File("db/gone/.wh..wh..opq", ""),
            // A directory merges, even one asked for; a non-directory on
            // the way hides what is below it.
            E::Dir("var/lib"),
            E::Symlink("var/cache", "/elsewhere"),
        ],
    ]
    .iter()
    .map(|l| Arc::new(tar(l)))
    .collect();
    let layers = layers_of(&tars, None);
    let want = |p: &[u8]| {
        p.starts_with(b"db/")
            || p == b"lib"
            || p == b"var/lib"
            || p.starts_with(b"var/lib/db/")
            || p.starts_with(b"var/cache/db/")
    };
    let within = |p: &[u8]| {
        [
            &b"db"[..],
            b"db/info",
            b"db/gone",
            b"var",
            b"var/lib",
            b"var/lib/db",
            b"var/cache",
            b"var/cache/db",
        ]
        .contains(&p)
    };
    let found = builderd_flatten::read_files(&layers, &want, &within, 5, 100).unwrap();
    let got: Vec<(String, Found)> = found
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), v))
        .collect();
    assert_eq!(
        got,
        vec![
            ("db/big".into(), Found::LargeFile),
            ("db/gone".into(), Found::Other),
            ("db/info/a.list".into(), Found::File(b"a".to_vec())),
            ("db/status".into(), Found::File(b"new".to_vec())),
            ("lib".into(), Found::Symlink(b"usr/lib".to_vec())),
            ("var/lib".into(), Found::Other),
            ("var/lib/db/x".into(), Found::File(b"x".to_vec())),
        ]
    );
    let err = builderd_flatten::read_files(&layers, &want, &within, 5, 3).unwrap_err();
    assert!(err.to_string().contains("3 bytes in all"), "{err}");
}
