//! Map attributes, creation checks, and the geometry derived from them.
//!
//! The checks are the kernel's, in the kernel's order (`map_create` then
//! `stack_map_alloc`), so a bad attribute gives the errno `bpf(2)` gives:
//! `vectors/attr_grid.tsv` holds 15,744 cases read off Linux 6.18 and the
//! tests replay every one.

use crate::uapi::{
    StackBuildId, BPF_F_NUMA_NODE, BPF_F_RDONLY, BPF_F_STACK_BUILD_ID, BPF_F_WRONLY,
    PERF_MAX_STACK_DEPTH, STACK_CREATE_FLAG_MASK,
};
use crate::Error;

/// The attributes of a map: the fields of `union bpf_attr` that
/// `BPF_MAP_CREATE` reads for a stack trace map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MapAttr {
    /// Number of stacks the map can hold (preallocated elements).
    pub max_entries: u32,
    /// Size of a key: must be 4 (a `u32` stack id).
    pub key_size: u32,
    /// Size of a value: `8 * depth` for ips maps, `32 * depth` for build-id
    /// maps.
    pub value_size: u32,
    /// `BPF_F_NUMA_NODE | BPF_F_RDONLY | BPF_F_WRONLY | BPF_F_STACK_BUILD_ID`.
    pub map_flags: u32,
    /// NUMA node, read only with `BPF_F_NUMA_NODE`. The crate models a
    /// machine with one node, so only node 0 and `u32::MAX` (the kernel's
    /// `NUMA_NO_NODE`, -1: any node) are accepted then.
    pub numa_node: u32,
}

impl Default for MapAttr {
    /// A map of 1024 ips stacks of up to 127 frames: the shape profilers use.
    fn default() -> Self {
        MapAttr {
            max_entries: 1024,
            key_size: 4,
            value_size: PERF_MAX_STACK_DEPTH * 8,
            map_flags: 0,
            numa_node: 0,
        }
    }
}

/// Settings that are not map attributes: the machine the map serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// Number of freelist shards (one per CPU); `cpu` arguments are taken
    /// modulo this. Must be at least 1.
    pub nr_cpus: usize,
    /// The `kernel.perf_event_max_stack` sysctl: the deepest chain a map
    /// stores, and the limit `value_size` is checked against.
    pub max_stack: u32,
}

impl Default for Config {
    /// One CPU, the default `perf_event_max_stack` of 127.
    fn default() -> Self {
        Config {
            nr_cpus: 1,
            max_stack: PERF_MAX_STACK_DEPTH,
        }
    }
}

/// `NUMA_NO_NODE` (-1 as the kernel's `int`): with `BPF_F_NUMA_NODE`, "any node".
const NUMA_NO_NODE: u32 = u32::MAX;

/// What a valid [`MapAttr`] and [`Config`] imply; computed once at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub attr: MapAttr,
    pub nr_cpus: usize,
    pub max_stack: u32,
    /// `max_entries.next_power_of_two()`.
    pub n_buckets: u32,
    /// Bytes of one frame: 8 (ips) or 32 (build id).
    pub frame_size: u32,
    /// Frames a value holds: `value_size / frame_size`.
    pub value_frames: u32,
    /// `value_size / 4`: 32-bit words of element data.
    pub value_words: usize,
}

impl Geometry {
    /// Runs the kernel's creation checks.
    pub fn new(attr: &MapAttr, cfg: &Config) -> Result<Geometry, Error> {
        // map_create(): the file-mode flags and the NUMA node come first.
        if attr.map_flags & BPF_F_RDONLY != 0 && attr.map_flags & BPF_F_WRONLY != 0 {
            return Err(Error::Inval);
        }
        // The kernel reads the node as an int: -1 is NUMA_NO_NODE ("any
        // node") and accepted; any other node but 0 is offline here.
        if attr.map_flags & BPF_F_NUMA_NODE != 0
            && attr.numa_node != 0
            && attr.numa_node != NUMA_NO_NODE
        {
            return Err(Error::Inval);
        }
        if cfg.nr_cpus == 0 {
            return Err(Error::Inval);
        }
        // stack_map_alloc()
        if attr.map_flags & !STACK_CREATE_FLAG_MASK != 0 {
            return Err(Error::Inval);
        }
        let value_size = attr.value_size;
        if attr.max_entries == 0 || attr.key_size != 4 || value_size < 8 || value_size % 8 != 0 {
            return Err(Error::Inval);
        }
        let build_id = attr.map_flags & BPF_F_STACK_BUILD_ID != 0;
        let frame_size = if build_id {
            size_of::<StackBuildId>() as u32
        } else {
            8
        };
        if value_size % frame_size != 0 || value_size / frame_size > cfg.max_stack {
            return Err(Error::Inval);
        }
        // Since CVE-2024-26883 the kernel refuses before rounding up, where
        // the seed source relied on roundup_pow_of_two() wrapping to 0.
        if attr.max_entries > 1 << 31 {
            return Err(Error::TooBig);
        }
        Ok(Geometry {
            attr: *attr,
            nr_cpus: cfg.nr_cpus,
            max_stack: cfg.max_stack,
            n_buckets: attr.max_entries.next_power_of_two(),
            frame_size,
            value_frames: value_size / frame_size,
            value_words: (value_size / 4) as usize,
        })
    }

    pub fn build_id(&self) -> bool {
        self.attr.map_flags & BPF_F_STACK_BUILD_ID != 0
    }

    /// The kernel's `stack_map_calculate_max_depth`: how many frames of a
    /// chain are taken, skip included.
    pub fn max_depth(&self, skip: u32) -> u32 {
        self.value_frames.saturating_add(skip).min(self.max_stack)
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    extern crate std;
    use super::*;

    /// Every row of `shared/vectors/attr_grid.tsv`, read off Linux 6.18.
    #[test]
    fn kernel_attr_grid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/vectors/attr_grid.tsv"
        );
        let text = std::fs::read_to_string(path).expect("shared/vectors/attr_grid.tsv");
        let mut rows = 0;
        // Miri is ~1000x slower: it checks every 61st row.
        let step = if cfg!(miri) { 61 } else { 1 };
        for line in text.lines().filter(|l| !l.starts_with('#')).step_by(step) {
            let f: std::vec::Vec<u32> = line.split('\t').map(|c| c.parse().unwrap()).collect();
            let attr = MapAttr {
                max_entries: f[0],
                key_size: f[1],
                value_size: f[2],
                map_flags: f[3],
                numa_node: 0,
            };
            let got = Geometry::new(&attr, &Config::default()).map_or_else(|e| e.errno(), |_| 0);
            assert_eq!(got as u32, f[4], "{attr:?}");
            rows += 1;
        }
        assert_eq!(rows, 15_744usize.div_ceil(step));
    }

    #[test]
    fn too_big_and_edges() {
        let a = |max_entries, map_flags| MapAttr {
            max_entries,
            map_flags,
            ..MapAttr::default()
        };
        let g = |a: MapAttr| Geometry::new(&a, &Config::default());
        assert_eq!(g(a((1 << 31) + 1, 0)), Err(Error::TooBig));
        assert_eq!(g(a(u32::MAX, 0)), Err(Error::TooBig));
        assert_eq!(g(a(1 << 31, 0)).unwrap().n_buckets, 1 << 31);
        assert_eq!(
            g(a(u32::MAX, BPF_F_RDONLY | BPF_F_WRONLY)),
            Err(Error::Inval)
        );
        assert_eq!(g(a(5, 0)).unwrap().n_buckets, 8);
        let numa = MapAttr {
            numa_node: 1,
            ..a(4, BPF_F_NUMA_NODE)
        };
        assert_eq!(g(numa), Err(Error::Inval));
        // NUMA_NO_NODE (-1) is "any node" to the kernel: accepted.
        let any = MapAttr {
            numa_node: u32::MAX,
            ..a(4, BPF_F_NUMA_NODE)
        };
        assert!(g(any).is_ok());
        let cfg = Config {
            nr_cpus: 0,
            ..Config::default()
        };
        assert_eq!(Geometry::new(&a(4, 0), &cfg), Err(Error::Inval));
        let shallow = Config {
            nr_cpus: 1,
            max_stack: 10,
        };
        assert_eq!(Geometry::new(&a(4, 0), &shallow), Err(Error::Inval));
    }
}
