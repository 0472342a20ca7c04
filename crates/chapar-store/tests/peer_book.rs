//! The peer book's bound: anyone who connects can be written there, so a
//! full book drops the records ranked lowest, never the one just written,
//! and what it keeps survives a reopen.

use std::collections::BTreeSet;

use chapar_store::Store;

/// Records in these tests are the rank itself, as 8 little-endian bytes.
fn record(rank: u64) -> Vec<u8> {
    rank.to_le_bytes().to_vec()
}

fn rank(record: &[u8]) -> u64 {
    record
        .try_into()
        .map(u64::from_le_bytes)
        .unwrap_or_default()
}

fn peer(n: u64) -> Vec<u8> {
    format!("peer-{n:04}").into_bytes()
}

fn kept(store: &Store) -> BTreeSet<Vec<u8>> {
    store
        .peers()
        .expect("peers")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn a_full_peer_book_drops_the_peers_seen_longest_ago() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for n in 0..10 {
        store
            .put_peer(&peer(n), &record(100 + n), 4, rank)
            .expect("put");
    }
    let expected: BTreeSet<Vec<u8>> = (6..10).map(peer).collect();
    assert_eq!(kept(&store), expected);

    // Rewriting a kept peer neither grows the book nor drops another.
    store
        .put_peer(&peer(7), &record(500), 4, rank)
        .expect("refresh");
    assert_eq!(kept(&store), expected);

    drop(store);
    let reopened = Store::open(dir.path()).expect("reopen");
    assert_eq!(kept(&reopened), expected);
    let refreshed = reopened
        .peers()
        .expect("peers")
        .into_iter()
        .find(|(k, _)| *k == peer(7))
        .map(|(_, v)| rank(&v));
    assert_eq!(refreshed, Some(500));
}

#[test]
fn the_record_just_written_stays_even_when_it_ranks_lowest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    for n in 0..3 {
        store
            .put_peer(&peer(n), &record(1000 + n), 3, rank)
            .expect("put");
    }
    // A peer whose record ranks below all others (a clock set back, a
    // record this version cannot read) still gets in; the lowest of the
    // others makes room.
    store.put_peer(&peer(9), &record(1), 3, rank).expect("put");
    let expected: BTreeSet<Vec<u8>> = [peer(1), peer(2), peer(9)].into_iter().collect();
    assert_eq!(kept(&store), expected);

    // A bound of zero still keeps the newest record.
    store.put_peer(&peer(5), &record(7), 0, rank).expect("put");
    let expected: BTreeSet<Vec<u8>> = [peer(5)].into_iter().collect();
    assert_eq!(kept(&store), expected);
}
