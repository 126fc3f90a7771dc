//! A command as a [`Lane`](super::batch::Lane) carries it: a decision's script call or a batch
//! of them kept as their parts (script, keys, operation, numbers) until they are written, or any
//! other command.
//!
//! Built as a `redis::Cmd`, a script call cost two allocations and a bookkeeping step an
//! argument, and the lane then read the arguments back to find calls on one key
//! (`coalesce.rs`) and to write them to the socket (`wire.rs`). Kept as parts, a call is built
//! with one allocation (its keys), compared field by field, and written to the socket in one
//! pass; it becomes a `redis::Cmd` only for the redis crate's connections (TLS, RESP3, the
//! cluster), argument for argument the same command ([`Command::to_cmd`]).

use std::sync::Arc;

use super::coalesce::Twin;
use crate::policy::{Window, Windows};
use crate::scripts::Single;

/// A command on its way to Redis.
#[derive(Debug, Clone)]
pub enum Command {
    /// One decision's call of its script.
    Script(ScriptCall),
    /// Calls on one key decided by one call of their script's batch twin (`coalesce.rs`).
    Batch(BatchCall),
    /// Any other command, as the redis crate builds it.
    Other(redis::Cmd),
}

impl From<redis::Cmd> for Command {
    fn from(cmd: redis::Cmd) -> Self {
        Command::Other(cmd)
    }
}

/// A script's operation: take permits, look without taking, or (a sliding log's batch sent a
/// second time after its connection broke) take what the calls have not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Allow,
    Peek,
    Again,
}

impl Op {
    fn text(self) -> &'static [u8] {
        match self {
            Op::Allow => b"allow",
            Op::Peek => b"peek",
            Op::Again => b"again",
        }
    }
}

/// A call's third argument: the sliding logs' and the token bucket's nonce, the integer
/// counters' increment, or nothing (an integer counter's call that reads its counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Third {
    Nonce { bytes: [u8; 33], len: u8 },
    Increment(u64),
    Empty,
}

impl Third {
    /// A nonce of at most 33 bytes (longer ones are cut: a member is 33 bytes at most).
    pub(crate) fn nonce(nonce: &[u8]) -> Self {
        let mut bytes = [0; 33];
        let len = nonce.len().min(bytes.len());
        bytes[..len].copy_from_slice(&nonce[..len]);
        Third::Nonce {
            bytes,
            len: len as u8,
        }
    }

    fn write(&self, out: &mut impl Args) {
        match self {
            Third::Nonce { bytes, len } => out.arg(&bytes[..usize::from(*len)]),
            Third::Increment(n) => out.number(*n),
            Third::Empty => out.arg(b""),
        }
    }
}

/// One decision's call: `EVALSHA <sha> <number of keys> <keys…> <op> <cost> <third>
/// <limit1> <window1_us> …`.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    pub(crate) single: Single,
    /// The keys, each written as RESP writes an argument (`$<len>\r\n<key>\r\n`), back to back.
    pub(crate) keys: Vec<u8>,
    pub(crate) key_count: usize,
    pub(crate) op: Op,
    pub(crate) cost: u64,
    pub(crate) third: Third,
    pub(crate) windows: Arc<Windows>,
}

impl ScriptCall {
    /// A call of `single` on keys that `write_keys` hands over one by one, each as its pieces,
    /// about `key_bytes` of them in all (room made up front: more only grows the buffer).
    pub(crate) fn new(
        single: Single,
        key_bytes: usize,
        write_keys: impl FnOnce(&mut dyn FnMut(&[&[u8]])),
        op: Op,
        cost: u64,
        third: Third,
        windows: Arc<Windows>,
    ) -> Self {
        let mut keys = Vec::with_capacity(key_bytes);
        let mut key_count = 0;
        write_keys(&mut |pieces: &[&[u8]]| {
            frame(
                &mut keys,
                b'$',
                pieces.iter().map(|piece| piece.len()).sum(),
            );
            for piece in pieces {
                // Most pieces are a separator or nothing: no copy called for those.
                match **piece {
                    [] => {}
                    [byte] => keys.push(byte),
                    _ => keys.extend_from_slice(piece),
                }
            }
            keys.extend_from_slice(b"\r\n");
            key_count += 1;
        });
        Self {
            single,
            keys,
            key_count,
            op,
            cost,
            third,
            windows,
        }
    }

    fn arg_count(&self) -> usize {
        6 + self.key_count + 2 * self.windows.len()
    }

    fn write(&self, out: &mut impl Args) {
        out.evalsha(self.single.script().get_hash(), self.single.evalsha());
        out.number(self.key_count as u64);
        out.keys(&self.keys);
        out.arg(self.op.text());
        out.number(self.cost);
        self.third.write(out);
        out.windows(&self.windows);
    }
}

/// Calls on one key decided by one call of `twin`'s batch script: `EVALSHA <batch sha> <number
/// of keys> <keys…> <op> [<number of windows>] <limit1> <window1_us> … <cost> <third> …`, a
/// cost and a third argument a call, in arrival order.
#[derive(Debug, Clone)]
pub struct BatchCall {
    pub(crate) twin: &'static Twin,
    /// The keys, as in [`ScriptCall::keys`].
    pub(crate) keys: Vec<u8>,
    pub(crate) key_count: usize,
    pub(crate) op: Op,
    pub(crate) windows: Arc<Windows>,
    /// Each call's cost and third argument.
    pub(crate) calls: Vec<(u64, Third)>,
}

impl BatchCall {
    fn arg_count(&self) -> usize {
        4 + self.key_count
            + usize::from(self.twin.several())
            + 2 * self.windows.len()
            + 2 * self.calls.len()
    }

    fn write(&self, out: &mut impl Args) {
        out.evalsha(self.twin.batch_hash(), self.twin.evalsha());
        out.number(self.key_count as u64);
        out.keys(&self.keys);
        out.arg(self.op.text());
        if self.twin.several() {
            out.number(self.windows.len() as u64);
        }
        out.windows(&self.windows);
        for (cost, third) in &self.calls {
            out.number(*cost);
            third.write(out);
        }
    }
}

/// `EVALSHA` and the hash `sha`, as RESP writes them: how every call of that script starts,
/// written once a script.
pub(crate) fn evalsha(sha: &str) -> Box<[u8]> {
    let mut resp = Vec::new();
    bulk(&mut resp, b"EVALSHA");
    bulk(&mut resp, sha.as_bytes());
    resp.into()
}

/// Each window's limit and length in microseconds, as RESP writes them: a script call's
/// window arguments, written once a policy ([`Windows::written`]).
pub(crate) fn window_arguments(windows: &[Window]) -> Box<[u8]> {
    let mut resp = Vec::new();
    for window in windows {
        for n in [window.max_requests(), window.micros()] {
            bulk(&mut resp, itoa::Buffer::new().format(n).as_bytes());
        }
    }
    resp.into()
}

impl Command {
    /// The command as the redis crate builds it, for its connections; argument for argument
    /// what [`Command::write`] writes.
    pub(crate) fn to_cmd(&self) -> redis::Cmd {
        let mut cmd = redis::Cmd::new();
        match self {
            Command::Script(call) => call.write(&mut cmd),
            Command::Batch(batch) => batch.write(&mut cmd),
            Command::Other(other) => return other.clone(),
        }
        cmd
    }

    /// Writes the command as RESP2 puts it on the wire, as the redis crate would write
    /// [`Command::to_cmd`]: an array of bulk strings. `write_other` writes an `Other`.
    pub(crate) fn write(
        &self,
        buffer: &mut Vec<u8>,
        write_other: impl FnOnce(&redis::Cmd, &mut Vec<u8>),
    ) {
        let count = match self {
            Command::Script(call) => call.arg_count(),
            Command::Batch(batch) => batch.arg_count(),
            Command::Other(other) => return write_other(other, buffer),
        };
        frame(buffer, b'*', count);
        let mut resp = Resp(buffer);
        match self {
            Command::Script(call) => call.write(&mut resp),
            Command::Batch(batch) => batch.write(&mut resp),
            Command::Other(_) => {}
        }
    }
}

/// Where a command's arguments go: a `redis::Cmd`, or a RESP buffer.
trait Args {
    fn arg(&mut self, bytes: &[u8]);

    /// Keys written as [`ScriptCall::keys`] holds them.
    fn keys(&mut self, framed: &[u8]);

    /// `EVALSHA` and `sha`, written as `resp` ([`evalsha`]) holds them.
    fn evalsha(&mut self, sha: &str, resp: &[u8]);

    /// The windows' limits and lengths.
    fn windows(&mut self, windows: &Windows);

    fn number(&mut self, n: u64) {
        self.arg(itoa::Buffer::new().format(n).as_bytes());
    }
}

impl Args for redis::Cmd {
    fn arg(&mut self, bytes: &[u8]) {
        redis::Cmd::arg(self, bytes);
    }

    fn keys(&mut self, framed: &[u8]) {
        for key in unframed(framed) {
            redis::Cmd::arg(self, key);
        }
    }

    fn evalsha(&mut self, sha: &str, _: &[u8]) {
        redis::Cmd::arg(self, "EVALSHA").arg(sha);
    }

    fn windows(&mut self, windows: &Windows) {
        for window in windows.iter() {
            self.number(window.max_requests());
            self.number(window.micros());
        }
    }
}

/// A RESP buffer.
struct Resp<'a>(&'a mut Vec<u8>);

impl Args for Resp<'_> {
    fn arg(&mut self, bytes: &[u8]) {
        bulk(self.0, bytes);
    }

    fn keys(&mut self, framed: &[u8]) {
        self.0.extend_from_slice(framed);
    }

    fn evalsha(&mut self, _: &str, resp: &[u8]) {
        self.0.extend_from_slice(resp);
    }

    fn windows(&mut self, windows: &Windows) {
        self.0.extend_from_slice(windows.written(window_arguments));
    }
}

/// `bytes` as a RESP bulk string: `$<len>\r\n<bytes>\r\n`.
#[inline]
fn bulk(buffer: &mut Vec<u8>, bytes: &[u8]) {
    frame(buffer, b'$', bytes.len());
    buffer.extend_from_slice(bytes);
    buffer.extend_from_slice(b"\r\n");
}

/// The keys of [`ScriptCall::keys`], one by one.
fn unframed(mut framed: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let rest = framed.strip_prefix(b"$")?;
        let end = rest.iter().position(|&b| b == b'\r')?;
        let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        let key = rest.get(end + 2..end + 2 + len)?;
        framed = rest.get(end + 2 + len + 2..)?;
        Some(key)
    })
}

/// `<kind><n>\r\n`.
#[inline(always)]
pub(super) fn frame(buffer: &mut Vec<u8>, kind: u8, n: usize) {
    buffer.push(kind);
    if n < 10 {
        buffer.push(b'0' + n as u8);
    } else if n < 100 {
        buffer.push(b'0' + (n / 10) as u8);
        buffer.push(b'0' + (n % 10) as u8);
    } else {
        digits(buffer, n);
    }
    buffer.push(b'\r');
    buffer.push(b'\n');
}

/// `n`'s digits, for a length of 100 or more.
#[cold]
#[inline(never)]
fn digits(buffer: &mut Vec<u8>, n: usize) {
    buffer.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::backend::coalesce;

    fn third() -> impl Strategy<Value = Third> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(|n| Third::nonce(&n)),
            any::<u64>().prop_map(Third::Increment),
            Just(Third::Empty),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![Just(Op::Allow), Just(Op::Peek), Just(Op::Again)]
    }

    fn call() -> impl Strategy<Value = ScriptCall> {
        (
            0..Single::ALL.len(),
            // Keys of any bytes and lengths, a line end or a `$` among them included.
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..5),
            op(),
            any::<u64>(),
            third(),
            proptest::collection::vec((any::<u64>(), 1..u64::MAX / 2), 1..4),
        )
            .prop_map(|(single, keys, op, cost, third, windows)| {
                let windows: Arc<Windows> = Arc::new(
                    windows
                        .into_iter()
                        .map(|(limit, us)| Window::new(limit, Duration::from_micros(us)))
                        .collect(),
                );
                let write_keys = |out: &mut dyn FnMut(&[&[u8]])| {
                    for key in &keys {
                        out(&[key]);
                    }
                };
                ScriptCall::new(Single::ALL[single], 0, write_keys, op, cost, third, windows)
            })
    }

    fn written(command: &Command) -> Vec<u8> {
        let mut buffer = Vec::new();
        command.write(&mut buffer, |other, buffer| {
            other.write_packed_command(buffer)
        });
        buffer
    }

    proptest! {
        /// A call and a batch are written to the wire byte for byte as the redis crate writes
        /// the command they become for its connections, whatever their keys and numbers.
        #[test]
        fn commands_are_written_as_the_command_they_become(
            first in call(),
            calls in proptest::collection::vec((any::<u64>(), third()), 1..6),
            twin in 0..5_usize,
        ) {
            let single = Command::Script(first.clone());
            prop_assert_eq!(written(&single), single.to_cmd().get_packed_command());
            let batch = Command::Batch(BatchCall {
                twin: coalesce::twin_at(twin),
                keys: first.keys.clone(),
                key_count: first.key_count,
                op: first.op,
                windows: first.windows.clone(),
                calls,
            });
            prop_assert_eq!(written(&batch), batch.to_cmd().get_packed_command());
        }

        /// The keys a call keeps framed are handed back one by one as they were given.
        #[test]
        fn keys_are_kept_as_they_were_given(call in call()) {
            let cmd = Command::Script(call.clone()).to_cmd();
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .filter_map(|arg| match arg {
                    redis::Arg::Simple(bytes) => Some(bytes.to_vec()),
                    _ => None,
                })
                .collect();
            prop_assert_eq!(args.len(), 6 + call.key_count + 2 * call.windows.len());
            prop_assert_eq!(unframed(&call.keys).count(), call.key_count);
            let keys: Vec<&[u8]> = unframed(&call.keys).collect();
            let sent: Vec<&[u8]> = args[3..3 + call.key_count].iter().map(Vec::as_slice).collect();
            prop_assert_eq!(keys, sent);
        }
    }

    /// Any other command is written by the writer it is handed to, as it is.
    #[test]
    fn another_command_is_written_as_it_is() {
        let mut ping = redis::cmd("PING");
        ping.arg("x");
        let other = Command::from(ping.clone());
        assert_eq!(written(&other), ping.get_packed_command());
        assert_eq!(
            other.to_cmd().get_packed_command(),
            ping.get_packed_command()
        );
    }
}
