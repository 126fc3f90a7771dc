//! IP addresses written as text, byte for byte as `Display` writes them, without the
//! formatting machinery: a client-IP key is written on every request, and `write!` spent about
//! a thousand instructions on an IPv4 address, most of a request's key.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Bytes an address takes at most: a whole IPv6 address (`ffff:…:ffff`).
pub(crate) const IP_TEXT_MAX: usize = 39;

/// A small buffer that addresses are written into, from the front.
pub(crate) struct TextBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> TextBuffer<N> {
    pub(crate) fn new() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
        }
    }

    /// What was written.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Appends `byte`; a buffer that is full keeps what it has (callers size it for the
    /// longest text).
    pub(crate) fn push(&mut self, byte: u8) {
        if let Some(slot) = self.bytes.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    /// Appends `n` in decimal.
    pub(crate) fn decimal(&mut self, n: u32) {
        let mut digits = [0u8; 10];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for &digit in &digits[at..] {
            self.push(digit);
        }
    }

    /// Appends `n` in lower-case hexadecimal, without leading zeros.
    fn hex(&mut self, n: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let nibble = usize::from((n >> shift) & 0xf);
            if nibble != 0 || started || shift == 0 {
                started = true;
                self.push(HEX[nibble]);
            }
        }
    }

    /// Appends `ip` as `Display` writes it (`192.0.2.7`).
    pub(crate) fn ipv4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            if octet >= 100 {
                self.push(b'0' + octet / 100);
            }
            if octet >= 10 {
                self.push(b'0' + octet / 10 % 10);
            }
            self.push(b'0' + octet % 10);
        }
    }

    /// Appends `ip` as `Display` writes it (RFC 5952: lower case, no leading zeros, the longest
    /// run of two or more zero groups, the first of equals, as `::`); an IPv4-mapped address
    /// (`::ffff:192.0.2.7`) with its IPv4 part in dotted form.
    pub(crate) fn ipv6(&mut self, ip: Ipv6Addr) {
        if let Some(v4) = ip.to_ipv4_mapped() {
            for &byte in b"::ffff:" {
                self.push(byte);
            }
            self.ipv4(v4);
            return;
        }
        let groups = ip.segments();
        // The longest run of zero groups, if it is at least two long.
        let (mut run_start, mut run_len) = (groups.len(), 0);
        let mut i = 0;
        while i < groups.len() {
            if groups[i] == 0 {
                let start = i;
                while i < groups.len() && groups[i] == 0 {
                    i += 1;
                }
                if i - start > run_len {
                    (run_start, run_len) = (start, i - start);
                }
            } else {
                i += 1;
            }
        }
        if run_len < 2 {
            run_start = groups.len();
        }
        let mut i = 0;
        while i < groups.len() {
            if i == run_start {
                self.push(b':');
                self.push(b':');
                i += run_len;
                continue;
            }
            if i > 0 && i != run_start + run_len {
                self.push(b':');
            }
            self.hex(groups[i]);
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v6(ip: Ipv6Addr) -> String {
        let mut out = TextBuffer::<IP_TEXT_MAX>::new();
        out.ipv6(ip);
        String::from_utf8_lossy(out.as_bytes()).into_owned()
    }

    fn v4(ip: Ipv4Addr) -> String {
        let mut out = TextBuffer::<15>::new();
        out.ipv4(ip);
        String::from_utf8_lossy(out.as_bytes()).into_owned()
    }

    #[test]
    fn the_spellings_display_writes() {
        for text in [
            "::",
            "::1",
            "1::",
            "2001:db8::1",
            "2001:db8:0:1:1:1:1:1",
            "2001:0:0:1::1",
            "1:0:0:2:0:0:0:3",
            "fe80::",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.7",
            "::192.0.2.7",
            "64:ff9b::c000:207",
        ] {
            let ip: Ipv6Addr = text.parse().expect("a valid address");
            assert_eq!(v6(ip), ip.to_string(), "{text}");
        }
        for text in ["0.0.0.0", "192.0.2.7", "255.255.255.255", "10.0.100.9"] {
            let ip: Ipv4Addr = text.parse().expect("a valid address");
            assert_eq!(v4(ip), ip.to_string());
        }
    }

    /// Groups drawn mostly from zero, so that runs of every length and position appear.
    fn groups() -> impl Strategy<Value = [u16; 8]> {
        proptest::array::uniform8(prop_oneof![
            3 => Just(0u16),
            1 => Just(1u16),
            1 => Just(0xffff_u16),
            2 => any::<u16>(),
        ])
    }

    proptest! {
        #[test]
        fn ipv6_as_display_writes_it(groups in groups()) {
            let ip = Ipv6Addr::from(groups);
            prop_assert_eq!(v6(ip), ip.to_string());
        }

        #[test]
        fn ipv4_as_display_writes_it(bits in any::<u32>()) {
            let ip = Ipv4Addr::from(bits);
            prop_assert_eq!(v4(ip), ip.to_string());
        }
    }
}
