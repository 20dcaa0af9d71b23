use dataplane_ebpf::{
    maps::{MapKind, MESH_FLOWS, MESH_STATS, OVERLAY_PORTS, VIP_FLOWS},
    migrations::{older_layouts, Migration as Known, OldLayout},
};

use super::*;

fn found(spec: &MapSpec) -> Found {
    Found {
        kind: Some(spec.kind),
        key_size: spec.key_size,
        value_size: spec.value_size,
        capacity: spec.capacity,
    }
}

#[test]
fn the_current_layout_is_adopted() {
    for spec in PINNED {
        let decision = decide(spec, spec.capacity, &found(spec), older_layouts(spec.name));
        assert!(matches!(decision, Some(Decision::Adopt)), "{}", spec.name);
    }
}

#[test]
fn each_known_older_layout_is_migrated_from_its_version() {
    for spec in [&MESH_FLOWS, &VIP_FLOWS] {
        let old = older_layouts(spec.name)[0];
        let pinned = Found {
            kind: Some(old.kind),
            key_size: old.key_size,
            value_size: old.value_size,
            capacity: spec.capacity,
        };
        match decide(spec, spec.capacity, &pinned, older_layouts(spec.name)) {
            Some(Decision::Migrate {
                from: MigrateFrom::Layout(0),
                how: How::Convert(_),
            }) => {}
            other => panic!("{}: {other:?}", spec.name),
        }
    }
    // MESH_FLOWS layout 0 is the 40-byte flow before the hop cache.
    assert_eq!(older_layouts(MESH_FLOWS.name)[0].value_size, 40);
}

#[test]
fn a_layout_marked_recreate_starts_empty() {
    let older = [OldLayout {
        version: 0,
        kind: MapKind::Hash,
        key_size: 4,
        value_size: 4,
        migration: Known::Recreate,
    }];
    let pinned = Found {
        value_size: 4,
        ..found(&OVERLAY_PORTS)
    };
    assert!(matches!(
        decide(&OVERLAY_PORTS, OVERLAY_PORTS.capacity, &pinned, &older),
        Some(Decision::Migrate {
            from: MigrateFrom::Layout(0),
            how: How::Recreate
        })
    ));
}

#[test]
fn another_capacity_is_copied_or_for_counters_recreated() {
    let smaller = Found {
        capacity: 1024,
        ..found(&MESH_FLOWS)
    };
    assert!(matches!(
        decide(&MESH_FLOWS, MESH_FLOWS.capacity, &smaller, &[]),
        Some(Decision::Migrate {
            from: MigrateFrom::Capacity(1024),
            how: How::Copy
        })
    ));
    let stats = Found {
        capacity: 16,
        ..found(&MESH_STATS)
    };
    assert!(matches!(
        decide(&MESH_STATS, MESH_STATS.capacity, &stats, &[]),
        Some(Decision::Migrate {
            how: How::Recreate,
            ..
        })
    ));
}

#[test]
fn an_unknown_layout_is_refused_with_what_to_do() {
    // A newer binary's conntrack (value grown again), and a map of another type.
    let newer = Found {
        value_size: 64,
        ..found(&MESH_FLOWS)
    };
    assert!(decide(
        &MESH_FLOWS,
        MESH_FLOWS.capacity,
        &newer,
        older_layouts(MESH_FLOWS.name)
    )
    .is_none());
    let other_type = Found {
        kind: Some(MapKind::Hash),
        ..found(&MESH_FLOWS)
    };
    assert!(decide(
        &MESH_FLOWS,
        MESH_FLOWS.capacity,
        &other_type,
        older_layouts(MESH_FLOWS.name)
    )
    .is_none());
    let unknown_type = Found {
        kind: None,
        ..found(&MESH_FLOWS)
    };
    assert!(decide(&MESH_FLOWS, MESH_FLOWS.capacity, &unknown_type, &[]).is_none());

    let error = DataplaneError::IncompatiblePin {
        path: PathBuf::from("/sys/fs/bpf/skein/maps/MESH_FLOWS"),
        found: newer.to_string(),
    };
    assert_eq!(
        error.to_string(),
        "pinned map /sys/fs/bpf/skein/maps/MESH_FLOWS has a layout this binary cannot \
         migrate (LruHash, key 16 B, value 64 B, 262144 entries); run `skein agent cleanup` \
         (drops every pinned map, connection tracking included: connections through this \
         node break) or run the previous binary"
    );
}
