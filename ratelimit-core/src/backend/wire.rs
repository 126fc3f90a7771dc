//! A connection to a standalone Redis over plain TCP that the calling task drives itself.
//!
//! The redis crate's multiplexed connection runs a task of its own (on the Redis I/O thread,
//! `connection.rs`): every call is a message to that task and a reply sent back, two wake-ups
//! across threads a call, and a handful of allocations. With a [`Lane`](super::batch::Lane) in
//! front, one caller at a time sends a pipeline and waits for its replies, so that task has
//! nothing left to multiplex: here the caller writes the pipeline and reads the replies on the
//! socket itself. A caller that is polled late (a busy runtime) finds its replies waiting in
//! the socket, and a timeout looks at the socket before the clock.
//!
//! RESP2 only, as the scripts answer; `rediss://`, Unix sockets and RESP3 keep the redis crate's
//! connection. The socket is taken out of the connection for an exchange and put back only when
//! every reply was read: a caller that gives up, or an I/O error, leaves no half-read socket
//! behind, and the next call opens a new one (handshake included).

use std::sync::Arc;

use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError, RedisResult, Value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::batch::Reply;
use super::command::{Command, frame};
use super::connection::keepalive;

/// Where a [`Wire`] connects and how it introduces itself: read once from the configured
/// address ([`Address::of`]), for every connection of the pool. No `Debug`: it holds the
/// password.
pub(crate) struct Address {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

impl Address {
    /// The address of `info` if a [`Wire`] can serve it: plain TCP, RESP2.
    pub(crate) fn of(info: &ConnectionInfo) -> Option<Arc<Self>> {
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let settings = info.redis_settings();
        (settings.protocol() == redis::ProtocolVersion::RESP2).then(|| {
            Arc::new(Self {
                host: host.clone(),
                port: *port,
                username: settings.username().map(str::to_owned),
                password: settings.password().map(str::to_owned),
                db: settings.db(),
            })
        })
    }
}

/// A connection opened by [`Wire::open`]; clones share the socket.
#[derive(Clone)]
pub(crate) struct Wire {
    address: Arc<Address>,
    socket: Arc<tokio::sync::Mutex<Option<Socket>>>,
}

/// An open socket and its buffers (kept, so that a call allocates none once they have grown).
struct Socket {
    stream: TcpStream,
    /// The runtime whose driver tells this socket it can be read: another runtime waiting on it
    /// would wait for a driver that may not be running.
    runtime: Option<tokio::runtime::Id>,
    read: Vec<u8>,
    write: Vec<u8>,
}

impl Wire {
    /// Connects to `address` and says hello (`AUTH`, `SELECT`).
    pub(crate) async fn open(address: &Arc<Address>) -> RedisResult<Self> {
        let socket = Socket::open(address).await?;
        Ok(Self {
            address: address.clone(),
            socket: Arc::new(tokio::sync::Mutex::new(Some(socket))),
        })
    }

    /// The database selected on this connection.
    pub(crate) fn db(&self) -> i64 {
        self.address.db
    }

    /// Sends `cmd` and reads its reply.
    pub(crate) fn call<'a>(
        &'a self,
        cmd: &'a Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + 'a {
        self.one(move |buffer| write_command(cmd, buffer), parse)
    }

    /// Sends every command of `pipeline` and reads their replies, in order.
    pub(crate) fn pipeline<'a>(
        &'a self,
        pipeline: &'a Pipeline,
    ) -> impl Future<Output = RedisResult<Vec<Value>>> + 'a {
        self.many(
            pipeline.len(),
            move |buffer| {
                for cmd in pipeline.cmd_iter() {
                    write_command(cmd, buffer);
                }
            },
            parse,
        )
    }

    /// Sends `command` and reads its reply: a script's numbers as [`Reply::Numbers`], with no
    /// allocation (see [`parse_reply`]).
    pub(crate) fn command<'a>(
        &'a self,
        command: &'a Command,
    ) -> impl Future<Output = RedisResult<Reply>> + 'a {
        self.one(
            move |buffer| command.write(buffer, write_command),
            parse_reply,
        )
    }

    /// Sends every one of `commands` and reads their replies, in order (as [`Self::command`]).
    pub(crate) fn commands<'a>(
        &'a self,
        commands: &'a [Command],
    ) -> impl Future<Output = RedisResult<Vec<Reply>>> + 'a {
        self.many(
            commands.len(),
            move |buffer| {
                for command in commands {
                    command.write(buffer, write_command);
                }
            },
            parse_reply,
        )
    }

    /// Sends the one command `write` writes and reads its reply, as `parse` reads it.
    async fn one<T>(&self, write: impl FnOnce(&mut Vec<u8>), parse: Parser<T>) -> RedisResult<T> {
        let mut reply = None;
        self.exchange(write, 1, parse, |value| reply = Some(value))
            .await?;
        reply.ok_or_else(|| RedisError::from((ErrorKind::Parse, "no reply")))
    }

    /// Sends the `count` commands `write` writes and reads their replies, in order, as `parse`
    /// reads them.
    async fn many<T>(
        &self,
        count: usize,
        write: impl FnOnce(&mut Vec<u8>),
        parse: Parser<T>,
    ) -> RedisResult<Vec<T>> {
        let mut replies = Vec::with_capacity(count);
        self.exchange(write, count, parse, |value| replies.push(value))
            .await?;
        Ok(replies)
    }

    /// Writes what `write` puts in the buffer, then reads `count` replies, as `parse` reads
    /// them, into `reply`.
    async fn exchange<T>(
        &self,
        write: impl FnOnce(&mut Vec<u8>),
        count: usize,
        parse: Parser<T>,
        reply: impl FnMut(T),
    ) -> RedisResult<()> {
        let mut slot = self.socket.lock().await;
        // Out of the slot until every reply is in: dropped with this future otherwise.
        let here = current_runtime();
        let mut socket = match slot.take() {
            Some(socket) if socket.runtime == here && socket.is_open() => socket,
            // None, opened on another runtime (a limiter built on one runtime and used on
            // another), or closed by the server while idle (a restart, `CLIENT KILL`, an idle
            // timeout): a new socket of this runtime's own. Found before anything is written,
            // the calls are sent once, on the new socket: none needs sending again. Boxed:
            // opening is rare, and its future would make every call's future larger.
            _ => Box::pin(Socket::open(&self.address)).await?,
        };
        socket.write.clear();
        write(&mut socket.write);
        socket.stream.write_all(&socket.write).await?;
        socket.read_replies(count, parse, reply).await?;
        *slot = Some(socket);
        Ok(())
    }
}

impl Socket {
    async fn open(address: &Address) -> RedisResult<Self> {
        let stream = TcpStream::connect((address.host.as_str(), address.port)).await?;
        // The settings of the redis crate's connections (`connection.rs`): `TCP_NODELAY`, and
        // keep-alive probes.
        stream.set_nodelay(true)?;
        redis::io::tcp::socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive())?;
        let mut socket = Self {
            stream,
            runtime: current_runtime(),
            read: Vec::with_capacity(4096),
            write: Vec::with_capacity(4096),
        };
        let mut hello = Vec::new();
        if let Some(password) = &address.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = &address.username {
                auth.arg(username);
            }
            hello.push(auth.arg(password).clone());
        }
        if address.db != 0 {
            hello.push(redis::cmd("SELECT").arg(address.db).clone());
        }
        if !hello.is_empty() {
            for cmd in &hello {
                cmd.write_packed_command(&mut socket.write);
            }
            socket.stream.write_all(&socket.write).await?;
            let mut refused = None;
            socket
                .read_replies(hello.len(), parse, |reply| {
                    if let Err(e) = reply.extract_error() {
                        refused.get_or_insert(e);
                    }
                })
                .await?;
            if let Some(refused) = refused {
                return Err(refused);
            }
        }
        Ok(socket)
    }

    /// Whether the server has not closed the socket since the last exchange: nothing is left to
    /// read on a socket in step, so anything readable (its end, an error, stray bytes) means it
    /// is done for. Without a read event since the last read, no system call is made.
    fn is_open(&self) -> bool {
        let mut probe = [0_u8; 1];
        matches!(
            self.stream.try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Reads `count` replies, in order, as `parse` reads them, handing each to `reply`.
    async fn read_replies<T>(
        &mut self,
        count: usize,
        parse: Parser<T>,
        mut reply: impl FnMut(T),
    ) -> RedisResult<()> {
        self.read.clear();
        let mut at = 0;
        let mut read = 0;
        while read < count {
            match parse(&self.read, at)? {
                Some((value, next)) => {
                    reply(value);
                    read += 1;
                    at = next;
                }
                None => {
                    if self.stream.read_buf(&mut self.read).await? == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionReset,
                            "Redis closed the connection",
                        )
                        .into());
                    }
                }
            }
        }
        if at != self.read.len() {
            // More than was asked: the connection is out of step.
            return Err(RedisError::from((
                ErrorKind::Parse,
                "more replies than calls",
            )));
        }
        Ok(())
    }
}

/// The runtime running the caller, if it is a tokio one.
fn current_runtime() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current()
        .ok()
        .map(|handle| handle.id())
}

/// The position just past the line that starts at `at` (its `\r\n` included), and the line.
fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buffer.get(at..)?;
    // A line ends at its first `\r`, which must be followed by `\n`: no RESP2 line holds one.
    let end = rest.iter().position(|&byte| byte == b'\r')?;
    match rest.get(end + 1) {
        Some(b'\n') => Some((&rest[..end], at + end + 2)),
        // `\r` last in what has arrived: the line is not complete yet.
        None => None,
        // A malformed line: its text runs to the next `\r\n`, which `number` then refuses.
        Some(_) => {
            let end = rest.windows(2).position(|pair| pair == b"\r\n")?;
            Some((&rest[..end], at + end + 2))
        }
    }
}

/// The integer `text` spells (`-` and decimal digits, as `i64::from_str` reads them without
/// a `+`), read byte by byte: six of them in every script reply.
#[inline]
fn number(text: &[u8]) -> RedisResult<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    // From 1 to 18 digits, no overflow is possible: no check a digit (a script's replies are
    // short numbers).
    if !digits.is_empty() && digits.len() <= 18 {
        let mut value: i64 = 0;
        for &byte in digits {
            let digit = byte.wrapping_sub(b'0');
            if digit > 9 {
                return Err(not_a_number(text));
            }
            value = value * 10 + i64::from(digit);
        }
        return Ok(if negative { -value } else { value });
    }
    long_number(text, negative, digits)
}

/// The error for `text`, which is not a number.
#[cold]
fn not_a_number(text: &[u8]) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "a number in a reply",
        String::from_utf8_lossy(text).into_owned(),
    ))
}

/// [`number`] of no digit or of 19 and more, read with overflow checks.
#[cold]
#[inline(never)]
fn long_number(text: &[u8], negative: bool, digits: &[u8]) -> RedisResult<i64> {
    let refuse = || not_a_number(text);
    if digits.is_empty() {
        return Err(refuse());
    }
    let mut value: i64 = 0;
    for &byte in digits {
        let digit = match byte {
            b'0'..=b'9' => i64::from(byte - b'0'),
            _ => return Err(refuse()),
        };
        // Negative numbers are accumulated as such, so that `i64::MIN` is read too.
        value = value
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(digit)
                } else {
                    v.checked_add(digit)
                }
            })
            .ok_or_else(refuse)?;
    }
    Ok(value)
}

/// Writes `cmd` into `buffer` as RESP2, byte for byte as `Cmd::write_packed_command` does. Its
/// framing (`*<n>`, `$<len>`, the line ends) is pushed a byte at a time: the redis crate copies
/// each of those few bytes with a `memcpy` call of its own, five an argument.
fn write_command(cmd: &Cmd, buffer: &mut Vec<u8>) {
    let args = cmd.args_iter();
    let mut total = 16;
    for arg in args.clone() {
        match arg {
            // `$`, up to 20 digits, and two line ends.
            redis::Arg::Simple(bytes) => total += bytes.len() + 25,
            // A cursor's value is the command's own: its writer knows it.
            _ => return cmd.write_packed_command(buffer),
        }
    }
    buffer.reserve(total);
    frame(buffer, b'*', args.len());
    for arg in args {
        if let redis::Arg::Simple(bytes) = arg {
            frame(buffer, b'$', bytes.len());
            buffer.extend_from_slice(bytes);
            buffer.push(b'\r');
            buffer.push(b'\n');
        }
    }
}

/// Arrays nested deeper than this are refused: Redis's replies to our commands nest two deep.
const MAX_DEPTH: usize = 8;

/// Reads the reply that starts at `at` of a buffer: the reply and where the next one starts,
/// `None` until all of it has arrived.
type Parser<T> = fn(&[u8], usize) -> RedisResult<Option<(T, usize)>>;

/// The RESP2 reply that starts at `at`, and where the next one starts; `None` until all of it
/// has arrived.
fn parse(buffer: &[u8], at: usize) -> RedisResult<Option<(Value, usize)>> {
    parse_nested(buffer, at, 0)
}

/// [`parse`] for a script call: an array of one to six integers, each an optional `-` and 1 to
/// 18 digits (what every script answers), is read into [`Reply::Numbers`] without building
/// an array; anything else (an error, a longer number, a reply still arriving) as [`parse`]
/// reads it.
fn parse_reply(buffer: &[u8], at: usize) -> RedisResult<Option<(Reply, usize)>> {
    if let Some(numbers) = script_numbers(buffer, at) {
        return Ok(Some(numbers));
    }
    if let Some(integers) = batch_integers(buffer, at) {
        return Ok(Some(integers));
    }
    Ok(parse(buffer, at)?.map(|(value, next)| (Reply::Value(value), next)))
}

/// Integers a batch script's reply holds at most to be read by [`batch_integers`]: six for
/// each of a pipeline's calls.
const BATCH_INTEGERS: usize = 6 * crate::backend::redis::IN_FLIGHT_PER_CONNECTION;

/// The array of seven to [`BATCH_INTEGERS`] short integers that starts at `at` (a batch
/// script's reply: four or six numbers for each of its calls), read in one pass into
/// [`Reply::Integers`], one allocation, where [`parse`] would build a value for each;
/// `None` when the reply is anything else or has not all arrived.
fn batch_integers(buffer: &[u8], at: usize) -> Option<(Reply, usize)> {
    let [b'*', ..] = buffer.get(at..)? else {
        return None;
    };
    let (count, mut at) = line(buffer, at + 1)?;
    if count.is_empty() || count.len() > 2 || !count.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let count = count
        .iter()
        .fold(0, |count, digit| count * 10 + usize::from(digit - b'0'));
    if !(7..=BATCH_INTEGERS).contains(&count) {
        return None;
    }
    let mut integers = [0; BATCH_INTEGERS];
    for integer in &mut integers[..count] {
        if buffer.get(at) != Some(&b':') {
            return None;
        }
        let (value, after) = short_integer(buffer, at + 1)?;
        *integer = value;
        at = after;
    }
    Some((Reply::Integers(integers[..count].to_vec()), at))
}

/// The array of one to six short integers that starts at `at`, read in one pass; `None` when
/// the reply is anything else or has not all arrived.
#[inline]
fn script_numbers(buffer: &[u8], at: usize) -> Option<(Reply, usize)> {
    let [b'*', count @ b'1'..=b'6', b'\r', b'\n', ..] = *buffer.get(at..)? else {
        return None;
    };
    let len = usize::from(count - b'0');
    let mut numbers = [0; 6];
    let mut at = at + 4;
    for number in &mut numbers[..len] {
        if buffer.get(at) != Some(&b':') {
            return None;
        }
        let (value, after) = short_integer(buffer, at + 1)?;
        *number = value;
        at = after;
    }
    Some((Reply::Numbers { numbers, len }, at))
}

/// The integer whose text starts at `at` and where the next reply starts, read in one pass when
/// it is an optional `-` and 1 to 18 digits followed by `\r\n` (what a script answers);
/// `None` for anything else, which the line's general reading ([`line`], [`number`]) then
/// reads, or refuses, or waits for.
#[inline]
fn short_integer(buffer: &[u8], at: usize) -> Option<(i64, usize)> {
    let rest = buffer.get(at..)?;
    let (negative, digits) = match rest {
        [b'-', digits @ ..] => (true, digits),
        _ => (false, rest),
    };
    let mut value: i64 = 0;
    let mut len = 0;
    for &byte in digits.iter().take(18) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value * 10 + i64::from(digit);
        len += 1;
    }
    if len == 0 || digits.get(len..len + 2) != Some(b"\r\n".as_slice()) {
        return None;
    }
    let end = at + usize::from(negative) + len + 2;
    Some((if negative { -value } else { value }, end))
}

fn parse_nested(buffer: &[u8], at: usize, depth: usize) -> RedisResult<Option<(Value, usize)>> {
    let Some(&kind) = buffer.get(at) else {
        return Ok(None);
    };
    let Some((text, next)) = line(buffer, at + 1) else {
        return Ok(None);
    };
    let value = match kind {
        b'+' if text == b"OK" => Value::Okay,
        b'+' => Value::SimpleString(String::from_utf8_lossy(text).into_owned()),
        // The redis crate sorts errors into their kinds (NOSCRIPT, BUSY, MOVED...).
        b'-' => redis::parse_redis_value(&buffer[at..next])?,
        b':' => Value::Int(number(text)?),
        b'$' => {
            let Ok(len) = usize::try_from(number(text)?) else {
                return Ok(Some((Value::Nil, next)));
            };
            let Some(end) = next.checked_add(len) else {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "a bulk string too long",
                )));
            };
            if buffer.len() < end.saturating_add(2) {
                return Ok(None);
            }
            return Ok(Some((
                Value::BulkString(buffer[next..end].to_vec()),
                end + 2,
            )));
        }
        b'*' => {
            let Ok(len) = usize::try_from(number(text)?) else {
                return Ok(Some((Value::Nil, next)));
            };
            if depth >= MAX_DEPTH {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "a reply nested too deep",
                )));
            }
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = next;
            for _ in 0..len {
                // An integer, what a script answers, is read here; anything else recursively.
                if buffer.get(at) == Some(&b':') {
                    if let Some((value, after)) = short_integer(buffer, at + 1) {
                        items.push(Value::Int(value));
                        at = after;
                        continue;
                    }
                    let Some((text, after)) = line(buffer, at + 1) else {
                        return Ok(None);
                    };
                    items.push(Value::Int(number(text)?));
                    at = after;
                    continue;
                }
                let Some((item, after)) = parse_nested(buffer, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            return Ok(Some((Value::Array(items), at)));
        }
        other => {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "a reply type outside RESP2",
                char::from(other).to_string(),
            )));
        }
    };
    Ok(Some((value, next)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer on a loopback socket that reads what it is sent and answers each connection with
    /// `answer`, for what a real server never does (too many replies, a reply in pieces, a
    /// connection closed mid-reply).
    async fn scripted_peer<F, Fut>(answer: F) -> (Arc<Address>, tokio::task::JoinHandle<()>)
    where
        F: Fn(usize, TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let port = listener.local_addr().expect("its address").port();
        let peer = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((stream, _)) = listener.accept().await {
                answer(accepted, stream).await;
                accepted += 1;
            }
        });
        let address = Arc::new(Address {
            host: "127.0.0.1".into(),
            port,
            username: None,
            password: None,
            db: 0,
        });
        (address, peer)
    }

    #[test]
    fn numbers_are_read_as_i64_from_str_reads_them() {
        for text in [
            "0",
            "-0",
            "7",
            "-7",
            "00012",
            "-1",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "",
            "-",
            "--1",
            "1-",
            "1a",
            " 1",
            "1 ",
            "\u{0661}",
        ] {
            assert_eq!(number(text.as_bytes()).ok(), text.parse().ok(), "{text:?}");
        }
    }

    /// Commands are written byte for byte as the redis crate writes them: short and long
    /// arguments, an empty one, more than 9 and more than 99 of them, and a cursor.
    #[test]
    fn commands_are_written_as_the_redis_crate_writes_them() {
        let mut many = redis::cmd("EVALSHA");
        many.arg("a".repeat(40)).arg(1).arg("ratelimit:{p:k}:sw");
        for i in 0..120 {
            many.arg(i).arg("x".repeat(i));
        }
        let mut scan = redis::cmd("SCAN");
        scan.cursor_arg(42).arg("MATCH").arg("k*");
        for cmd in [
            redis::cmd("PING"),
            redis::cmd("SET").arg("k").arg("").clone(),
            redis::cmd("GET").arg("v".repeat(300)).clone(),
            many,
            scan,
        ] {
            let mut ours = b"left before".to_vec();
            let mut theirs = ours.clone();
            write_command(&cmd, &mut ours);
            cmd.write_packed_command(&mut theirs);
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }

    /// Integers of every width, from one digit to 19.
    fn any_width() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::strategy::Strategy;
        (proptest::prelude::any::<i64>(), 0..64_u32).prop_map(|(n, shift)| n >> shift)
    }

    /// `numbers` as a RESP2 array of integers.
    fn array_of(numbers: &[i64]) -> Vec<u8> {
        let mut reply = format!("*{}\r\n", numbers.len()).into_bytes();
        for n in numbers {
            reply.extend_from_slice(format!(":{n}\r\n").as_bytes());
        }
        reply
    }

    proptest::proptest! {
        #[test]
        fn every_i64_is_read_back(n in proptest::prelude::any::<i64>(), shift in 0..64_u32) {
            let n = n >> shift;
            proptest::prop_assert_eq!(number(n.to_string().as_bytes()).ok(), Some(n));
        }

        /// A script's array of integers, read in one pass an integer, gives every integer back,
        /// short or long, and waits when cut anywhere.
        #[test]
        fn an_array_of_integers_is_read_back(
            numbers in proptest::collection::vec(any_width(), 0..8),
        ) {
            let reply = array_of(&numbers);
            let expected = Value::Array(numbers.iter().copied().map(Value::Int).collect());
            proptest::prop_assert_eq!(parse(&reply, 0).ok().flatten(), Some((expected, reply.len())));
            for cut in 0..reply.len() {
                proptest::prop_assert!(matches!(parse(&reply[..cut], 0), Ok(None)), "cut at {}", cut);
            }
        }
    }

    proptest::proptest! {
        /// A script call's reply (`parse_reply`) holds the integers `parse` reads: as numbers
        /// when there are one to six of at most 18 digits, as a batch's integers when there
        /// are seven to `BATCH_INTEGERS` of them, as `parse`'s array otherwise; and it waits
        /// when cut anywhere.
        #[test]
        fn a_script_reply_is_read_into_numbers(
            numbers in proptest::prop_oneof![
                proptest::collection::vec(any_width(), 0..9),
                proptest::collection::vec(any_width(), 7..=BATCH_INTEGERS + 2),
                // Short ones mostly, as a batch answers.
                proptest::collection::vec(-9_i64..99, 7..=BATCH_INTEGERS + 2),
            ],
        ) {
            let reply = array_of(&numbers);
            let all_short = numbers.iter().all(|n| n.unsigned_abs() < 10_u64.pow(18));
            let short = (1..=6).contains(&numbers.len()) && all_short;
            let batch = (7..=BATCH_INTEGERS).contains(&numbers.len()) && all_short;
            match parse_reply(&reply, 0) {
                Ok(Some((Reply::Numbers { numbers: read, len }, end))) => {
                    proptest::prop_assert!(short, "{:?} read as numbers", numbers);
                    proptest::prop_assert_eq!(&read[..len], numbers.as_slice());
                    proptest::prop_assert_eq!(end, reply.len());
                }
                Ok(Some((Reply::Integers(read), end))) => {
                    proptest::prop_assert!(batch, "{:?} read as a batch's integers", numbers);
                    proptest::prop_assert_eq!(&read, &numbers);
                    proptest::prop_assert_eq!(end, reply.len());
                }
                Ok(Some((Reply::Value(value), end))) => {
                    proptest::prop_assert!(!short && !batch, "{:?} read as an array", numbers);
                    let expected = Value::Array(numbers.iter().copied().map(Value::Int).collect());
                    proptest::prop_assert_eq!(value, expected);
                    proptest::prop_assert_eq!(end, reply.len());
                }
                other => proptest::prop_assert!(false, "{:?}", other.map(|r| r.map(|(_, end)| end))),
            }
            for cut in 0..reply.len() {
                proptest::prop_assert!(
                    matches!(parse_reply(&reply[..cut], 0), Ok(None)),
                    "cut at {}",
                    cut
                );
            }
        }
    }

    /// Whatever a script call's reply holds beside its numbers is read as `parse` reads it.
    #[test]
    fn a_script_reply_of_anything_else_is_read_as_any_reply() {
        let replies: [&[u8]; 8] = [
            b"-NOSCRIPT No matching script. Please use EVAL.\r\n",
            b"+OK\r\n",
            b":7\r\n",
            b"*0\r\n",
            b"*2\r\n*1\r\n:1\r\n:2\r\n",
            b"*2\r\n:1\r\n$1\r\nx\r\n",
            b"*1\r\n:+1\r\n",
            b"*3\r\n:1\r\n:2\r\n*1\r\n:4\r\n",
        ];
        for reply in replies {
            let any =
                parse(reply, 0).map(|read| read.map(|(value, end)| (Reply::Value(value), end)));
            let scripted = parse_reply(reply, 0);
            assert_eq!(
                format!("{scripted:?}"),
                format!("{any:?}"),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
        // Two replies in a row: the first one's numbers, and where the second starts.
        let two = b"*2\r\n:1\r\n:-2\r\n*1\r\n:3\r\n";
        let Ok(Some((Reply::Numbers { numbers, len }, end))) = parse_reply(two, 0) else {
            panic!("numbers expected");
        };
        assert_eq!((&numbers[..len], end), (&[1, -2][..], 13));
    }

    /// Reads one request's bytes (whatever has arrived).
    async fn read_request(stream: &mut TcpStream) {
        let mut buffer = [0u8; 512];
        let _ = stream.read(&mut buffer).await;
    }

    #[tokio::test]
    async fn a_reply_in_pieces_is_read_whole() {
        let (address, _peer) = scripted_peer(|_, mut stream| async move {
            read_request(&mut stream).await;
            for byte in b"*2\r\n:1\r\n$5\r\nhello\r\n" {
                let _ = stream.write_all(&[*byte]).await;
                tokio::task::yield_now().await;
            }
            read_request(&mut stream).await;
        })
        .await;
        let wire = Wire::open(&address).await.expect("connected");
        let reply = wire.call(&redis::cmd("PING")).await.expect("a reply");
        assert_eq!(
            reply,
            Value::Array(vec![Value::Int(1), Value::BulkString(b"hello".to_vec())])
        );
    }

    #[tokio::test]
    async fn more_replies_than_calls_drop_the_connection() {
        let (address, _peer) = scripted_peer(|accepted, mut stream| async move {
            read_request(&mut stream).await;
            let answer: &[u8] = if accepted == 0 {
                b"+PONG\r\n+PONG\r\n"
            } else {
                b"+PONG\r\n"
            };
            let _ = stream.write_all(answer).await;
            read_request(&mut stream).await;
        })
        .await;
        let wire = Wire::open(&address).await.expect("connected");
        let error = wire
            .call(&redis::cmd("PING"))
            .await
            .expect_err("out of step");
        assert_eq!(error.kind(), ErrorKind::Parse);
        // The next call is on a new connection, in step.
        assert_eq!(
            wire.call(&redis::cmd("PING")).await.expect("a reply"),
            Value::SimpleString("PONG".into())
        );
    }

    /// A connection the server closed while it was idle is found closed before anything is
    /// written to it: the call goes out once, on a new connection, and gets its reply.
    #[tokio::test]
    async fn a_connection_closed_while_idle_is_replaced_before_the_call() {
        let (address, _peer) = scripted_peer(|accepted, mut stream| async move {
            read_request(&mut stream).await;
            let _ = stream.write_all(b"+PONG\r\n").await;
            if accepted > 0 {
                read_request(&mut stream).await;
            }
            // The first connection is closed once it has answered.
        })
        .await;
        let wire = Wire::open(&address).await.expect("connected");
        assert!(wire.call(&redis::cmd("PING")).await.is_ok());
        // Time for the server's close to arrive (a wait, not a measure).
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(
            wire.call(&redis::cmd("PING"))
                .await
                .expect("a reply on a new connection"),
            Value::SimpleString("PONG".into())
        );
    }

    #[tokio::test]
    async fn a_connection_closed_mid_reply_is_a_broken_connection() {
        let (address, _peer) = scripted_peer(|_, mut stream| async move {
            read_request(&mut stream).await;
            let _ = stream.write_all(b"*6\r\n:1\r\n:1\r\n").await;
        })
        .await;
        let wire = Wire::open(&address).await.expect("connected");
        let error = wire
            .pipeline(redis::pipe().cmd("EVALSHA").cmd("EVALSHA"))
            .await
            .expect_err("closed");
        assert!(
            error.is_connection_dropped() || error.is_io_error(),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_hello_is_an_error() {
        let (address, _peer) = scripted_peer(|_, mut stream| async move {
            read_request(&mut stream).await;
            let _ = stream
                .write_all(b"-WRONGPASS invalid username-password pair\r\n")
                .await;
        })
        .await;
        let address = Arc::new(Address {
            host: address.host.clone(),
            port: address.port,
            username: Some("limiter".into()),
            password: Some("nope".into()),
            db: 0,
        });
        let Err(error) = Wire::open(&address).await else {
            panic!("a refused AUTH opened a connection");
        };
        assert!(error.to_string().contains("WRONGPASS"), "{error}");
    }

    #[test]
    fn only_plain_tcp_and_resp2_are_served() {
        use redis::IntoConnectionInfo;
        let info = |url: &str| url.into_connection_info().expect("a valid address");
        let plain = Address::of(&info("redis://:pw@10.0.0.1:6380/2")).expect("served");
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.db),
            ("10.0.0.1", 6380, 2)
        );
        assert_eq!(plain.password.as_deref(), Some("pw"));
        assert!(Address::of(&info("redis://10.0.0.1:6380?protocol=resp3")).is_none());
        assert!(Address::of(&info("rediss://10.0.0.1:6380")).is_none());
        assert!(Address::of(&info("redis+unix:///tmp/redis.sock")).is_none());
    }

    fn whole(bytes: &[u8]) -> Value {
        match parse(bytes, 0) {
            Ok(Some((value, end))) if end == bytes.len() => value,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn every_reply_a_script_or_a_command_gives() {
        assert_eq!(whole(b"+OK\r\n"), Value::Okay);
        assert_eq!(whole(b"+PONG\r\n"), Value::SimpleString("PONG".into()));
        assert_eq!(whole(b":-42\r\n"), Value::Int(-42));
        assert_eq!(whole(b"$-1\r\n"), Value::Nil);
        assert_eq!(whole(b"*-1\r\n"), Value::Nil);
        assert_eq!(whole(b"$0\r\n\r\n"), Value::BulkString(Vec::new()));
        assert_eq!(
            whole(b"$4\r\na\r\nb\r\n"),
            Value::BulkString(b"a\r\nb".to_vec())
        );
        assert_eq!(
            whole(b"*6\r\n:1\r\n:1\r\n:100\r\n:99\r\n:60000000\r\n:0\r\n"),
            Value::Array([1, 1, 100, 99, 60_000_000, 0].map(Value::Int).to_vec())
        );
        assert_eq!(
            whole(b"*2\r\n$1\r\n0\r\n*1\r\n$3\r\nkey\r\n"),
            Value::Array(vec![
                Value::BulkString(b"0".to_vec()),
                Value::Array(vec![Value::BulkString(b"key".to_vec())]),
            ])
        );
        let error = whole(b"-NOSCRIPT No matching script.\r\n")
            .extract_error()
            .expect_err("an error reply");
        assert_eq!(
            error.kind(),
            ErrorKind::Server(redis::ServerErrorKind::NoScript)
        );
    }

    #[test]
    fn a_reply_cut_anywhere_waits_for_the_rest() {
        // A bulk string may hold `\r`; a line ends only at `\r\n`.
        let reply = b"*4\r\n:1\r\n$5\r\nhe\rlo\r\n*2\r\n:-7\r\n$-1\r\n:0\r\n";
        for cut in 0..reply.len() {
            assert!(matches!(parse(&reply[..cut], 0), Ok(None)), "cut at {cut}");
        }
        let (value, end) = parse(reply, 0).expect("no error").expect("all of it");
        assert_eq!(end, reply.len());
        assert_eq!(
            value,
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(b"he\rlo".to_vec()),
                Value::Array(vec![Value::Int(-7), Value::Nil]),
                Value::Int(0),
            ])
        );
    }

    #[test]
    fn a_malformed_reply_is_an_error_not_a_wait() {
        // `:1\r2\r\n`: a number line with a stray `\r` is refused, not read as 1.
        for bad in [
            &b":x\r\n"[..],
            b"*y\r\n",
            b"$z\r\n",
            b"%1\r\n",
            b"_\r\n",
            b":1\r2\r\n",
            b"*1\r\n:1\r2\r\n",
            b"*1\r\n:-\r\n",
            b"*1\r\n:\r\n",
            b"*1\r\n:12a\r\n",
            b"*2\r\n:1\r\n:1\n\r\n",
        ] {
            assert!(parse(bad, 0).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep, 0).is_err(), "nested too deep");
        let deep_enough = [b"*1\r\n".repeat(MAX_DEPTH), b":1\r\n".to_vec()].concat();
        assert!(matches!(parse(&deep_enough, 0), Ok(Some(_))));
    }
}
