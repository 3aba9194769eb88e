//! FNV-1a: a hash that comes out the same in every release, run and platform, unlike the
//! standard library's hasher. For names and choices that must be the same each time they are
//! computed: vacate's migration names and shortened node label values, the simulator's fault
//! decisions, the testbed's made-up node addresses. It lives here because every crate of the
//! workspace depends on this one.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// The 64-bit FNV-1a hash of `text`'s UTF-8 bytes.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// [`fnv1a`] folded to 32 bits: the upper half xor-ed into the lower.
pub fn fnv1a_32(text: &str) -> u32 {
    let hash = fnv1a(text);
    (hash ^ (hash >> 32)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference values of FNV-1a, and what vacate, the simulator and the testbed computed
    /// with their own copies before they shared this one: migration names already in clusters
    /// depend on these staying put.
    #[test]
    fn known_values_never_change() {
        for (text, hash, folded) in [
            ("", 0xcbf2_9ce4_8422_2325, 0x4fd0_bfc1),
            ("a", 0xaf63_dc4c_8601_ec8c, 0x2962_30c0),
            ("foobar", 0x8594_4171_f739_67e8, 0x72ad_2699),
            (
                "worker-3/1767225600000000000",
                0x92a4_22af_d49f_2724,
                0x463b_058b,
            ),
            ("node-0/0", 0x0163_6fd2_f669_70a7, 0xf70a_1f75),
            ("set-abc123-0", 0xb94c_43fc_f898_8f4f, 0x41d4_ccb3),
        ] {
            assert_eq!(fnv1a(text), hash, "{text:?}");
            assert_eq!(fnv1a_32(text), folded, "{text:?}");
        }
    }
}
