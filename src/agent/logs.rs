//! Container logs as `kubectl logs` sees them: reading the files containerd writes in the
//! CRI log format (`<RFC3339Nano> <stdout|stderr> <P|F> <message>`, one line per chunk,
//! `P` for a partial chunk continued by the next line, `F` for the chunk that ends a line),
//! joining partial chunks, and applying the pod log options (`tailLines`, `sinceTime`,
//! `timestamps`, `limitBytes`, `follow`).
//!
//! Files live at `<data-dir>/agent/logs/<ns>_<pod>_<uid>/<container>/<attempt>.log`; a
//! restart writes the next attempt's file, so `previous` reads the file before the
//! current one.
//!
//! Depends on: nothing else in the crate (the caller says whether the container still
//! runs). Must not depend on: `apiserver`, `store`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio::sync::mpsc;

/// Bytes buffered before they are sent to the client (sent earlier at end of file).
const FLUSH_AT: usize = 32 * 1024;
/// How often a followed file is polled for new data.
const POLL: Duration = Duration::from_millis(100);
/// How often a followed container is asked whether it still runs.
const RUNNING_CHECK: Duration = Duration::from_secs(1);

/// Errors reading logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What to read, as in `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new lines until the container stops.
    pub follow: bool,
    /// Read the previous attempt's log instead of the current one.
    pub previous: bool,
    /// Prefix every line with its RFC 3339 timestamp (nanoseconds, fixed width).
    pub timestamps: bool,
    /// Only the last N lines.
    pub tail_lines: Option<u64>,
    /// Only lines written at or after this time.
    pub since: Option<jiff::Timestamp>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

/// The output stream a chunk was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// When the runtime wrote it.
    pub time: jiff::Timestamp,
    /// Which stream.
    pub stream: Stream,
    /// Whether the next chunk continues this line.
    pub partial: bool,
    /// The text (without the line's newline).
    pub content: &'a [u8],
}

/// Parses one CRI log line (without its trailing newline); `None` if it is malformed.
pub fn parse_line(line: &[u8]) -> Option<Chunk<'_>> {
    let mut fields = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(fields.next()?)
        .ok()?
        .parse::<jiff::Timestamp>()
        .ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // The tag field may carry several `:`-separated tags; the first is P or F.
    let tag = fields.next()?;
    let partial = match tag.split(|b| *b == b':').next() {
        Some(b"P") => true,
        Some(b"F") => false,
        _ => return None,
    };
    Some(Chunk {
        time,
        stream,
        partial,
        content: fields.next().unwrap_or_default(),
    })
}

/// A timestamp as the kubelet prints it: RFC 3339 in UTC with exactly nine fractional
/// digits, so that lines sort and align.
pub fn format_timestamp(t: jiff::Timestamp) -> String {
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond()
    )
}

/// Turns chunks into the text `kubectl logs` prints, applying `since`, `timestamps` and
/// `limitBytes`. Partial chunks are joined: the timestamp prefixes only the first chunk
/// of a line and only the final chunk ends it with a newline.
#[derive(Debug)]
struct Renderer {
    timestamps: bool,
    since: Option<jiff::Timestamp>,
    remaining: Option<u64>,
    /// Whether the next chunk starts a new line.
    at_line_start: bool,
    /// Whether the line being continued was filtered out.
    skipping: bool,
}

impl Renderer {
    fn new(opts: &LogOptions) -> Renderer {
        Renderer {
            timestamps: opts.timestamps,
            since: opts.since,
            remaining: opts.limit_bytes,
            at_line_start: true,
            skipping: false,
        }
    }

    fn exhausted(&self) -> bool {
        self.remaining == Some(0)
    }

    /// Appends one raw file line (without newline) to `out`.
    fn line(&mut self, raw: &[u8], out: &mut BytesMut) {
        let Some(chunk) = parse_line(raw) else {
            tracing::debug!(line = %String::from_utf8_lossy(raw), "skipping a malformed CRI log line");
            return;
        };
        if self.at_line_start {
            self.skipping = self.since.is_some_and(|s| chunk.time < s);
        }
        let starts = self.at_line_start;
        self.at_line_start = !chunk.partial;
        if self.skipping {
            return;
        }
        let mut text = Vec::with_capacity(chunk.content.len() + 32);
        if starts && self.timestamps {
            text.extend_from_slice(format_timestamp(chunk.time).as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(chunk.content);
        if !chunk.partial {
            text.push(b'\n');
        }
        if let Some(rem) = &mut self.remaining {
            let n = (*rem).min(text.len() as u64) as usize;
            text.truncate(n);
            *rem -= n as u64;
        }
        out.extend_from_slice(&text);
    }
}

/// The file offset where the last `n` complete lines (a line being a run of partial
/// chunks ended by a full one) begin; the end of the file for `n == 0`.
async fn tail_offset(path: &Path, n: u64) -> Result<u64, Error> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut starts = std::collections::VecDeque::with_capacity(n.min(4096) as usize + 1);
    let mut offset = 0u64;
    let mut line_start = 0u64;
    let mut at_line_start = true;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).await.map_err(io)?;
        if read == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        if at_line_start {
            line_start = offset;
        }
        offset += read as u64;
        let partial = parse_line(&buf[..buf.len() - 1]).is_some_and(|c| c.partial);
        at_line_start = !partial;
        if !partial {
            starts.push_back(line_start);
            if starts.len() as u64 > n {
                starts.pop_front();
            }
        }
    }
    Ok(if n == 0 {
        offset
    } else {
        starts.front().copied().unwrap_or(offset)
    })
}

/// Streams the log file at `path` into `tx` per `opts` (`previous` is the caller's
/// business: it picks the file). While following, `running` is asked about once a second
/// at the end of the file; once it answers false the rest of the file is sent and the
/// stream ends. It also ends when the receiver goes away.
pub async fn stream<F, Fut>(
    path: &Path,
    opts: &LogOptions,
    mut running: F,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let start = match opts.tail_lines {
        Some(n) => tail_offset(path, n).await?,
        None => 0,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(io)?;
    let mut reader = BufReader::new(file);
    let mut position = start;
    let mut render = Renderer::new(opts);
    let mut out = BytesMut::new();
    let mut line = Vec::new();
    let mut last_check = tokio::time::Instant::now();
    let mut stopped = false;
    loop {
        let read = reader.read_until(b'\n', &mut line).await.map_err(io)?;
        position += read as u64;
        if line.last() == Some(&b'\n') {
            render.line(&line[..line.len() - 1], &mut out);
            line.clear();
            if render.exhausted() {
                break;
            }
            if out.len() >= FLUSH_AT && tx.send(out.split().freeze()).await.is_err() {
                return Ok(());
            }
            continue;
        }
        // End of the file (possibly in the middle of a line being written).
        if !out.is_empty() && tx.send(out.split().freeze()).await.is_err() {
            return Ok(());
        }
        if !opts.follow || stopped {
            break;
        }
        if last_check.elapsed() >= RUNNING_CHECK {
            last_check = tokio::time::Instant::now();
            if !running().await {
                // Drain what the container wrote before it stopped, then end.
                stopped = true;
                continue;
            }
        }
        // A truncated (or replaced) file starts over.
        if let Ok(meta) = tokio::fs::metadata(path).await
            && meta.len() < position
        {
            let file = tokio::fs::File::open(path).await.map_err(io)?;
            reader = BufReader::new(file);
            position = 0;
            line.clear();
        }
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    if !out.is_empty() {
        let _ = tx.send(out.freeze()).await;
    }
    Ok(())
}

/// The attempt number of a log file name (`3.log` → 3).
fn attempt_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The log file of the attempt before `current` in the same directory, if any.
pub fn previous_file(current: &Path) -> Option<PathBuf> {
    let n = attempt_of(current)?;
    let dir = current.parent()?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter_map(|p| attempt_of(&p).filter(|a| *a < n).map(|a| (a, p)))
        .max_by_key(|(a, _)| *a)
        .map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_lines() {
        type Want<'a> = Option<(Stream, bool, &'a [u8])>;
        let cases: &[(&[u8], Want)] = &[
            (
                b"2024-05-01T10:00:00.123456789Z stdout F hello world",
                Some((Stream::Stdout, false, b"hello world")),
            ),
            (
                b"2024-05-01T10:00:00Z stderr P part",
                Some((Stream::Stderr, true, b"part")),
            ),
            (
                b"2024-05-01T10:00:00.5+02:00 stdout F ",
                Some((Stream::Stdout, false, b"")),
            ),
            (
                b"2024-05-01T10:00:00.5Z stdout F",
                Some((Stream::Stdout, false, b"")),
            ),
            (
                b"2024-05-01T10:00:00Z stdout F:x  two  spaces ",
                Some((Stream::Stdout, false, b" two  spaces ")),
            ),
            (b"2024-05-01T10:00:00Z stdin F x", None),
            (b"2024-05-01T10:00:00Z stdout X x", None),
            (b"not-a-time stdout F x", None),
            (b"", None),
        ];
        for (line, want) in cases {
            let got = parse_line(line).map(|c| (c.stream, c.partial, c.content));
            assert_eq!(got, *want, "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn timestamps_have_nine_digits_in_utc() {
        let cases = [
            ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.000000000Z"),
            ("2024-05-01T10:00:00.5Z", "2024-05-01T10:00:00.500000000Z"),
            (
                "2024-05-01T12:00:00.123456789+02:00",
                "2024-05-01T10:00:00.123456789Z",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(format_timestamp(input.parse().unwrap()), want);
        }
    }

    const LOG: &str = "\
2024-05-01T10:00:01Z stdout F one
2024-05-01T10:00:02Z stderr F two
2024-05-01T10:00:03Z stdout P thr
2024-05-01T10:00:03.5Z stdout P e
2024-05-01T10:00:04Z stdout F e
2024-05-01T10:00:05Z stdout F four
";

    async fn read_all(path: &Path, opts: LogOptions) -> String {
        let (tx, mut rx) = mpsc::channel(16);
        stream(path, &opts, || async { false }, tx).await.unwrap();
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend_from_slice(&b);
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn renders_with_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).unwrap();
        let since = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        let cases = [
            (LogOptions::default(), "one\ntwo\nthree\nfour\n"),
            (
                LogOptions {
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "three\nfour\n",
            ),
            (
                LogOptions {
                    tail_lines: Some(1),
                    ..Default::default()
                },
                "four\n",
            ),
            (
                LogOptions {
                    tail_lines: Some(0),
                    ..Default::default()
                },
                "",
            ),
            (
                LogOptions {
                    tail_lines: Some(10),
                    ..Default::default()
                },
                "one\ntwo\nthree\nfour\n",
            ),
            (
                LogOptions {
                    since: since("2024-05-01T10:00:02Z"),
                    ..Default::default()
                },
                "two\nthree\nfour\n",
            ),
            // A line is kept or dropped whole, by the time of its first chunk.
            (
                LogOptions {
                    since: since("2024-05-01T10:00:03.2Z"),
                    ..Default::default()
                },
                "four\n",
            ),
            (
                LogOptions {
                    limit_bytes: Some(6),
                    ..Default::default()
                },
                "one\ntw",
            ),
            (
                LogOptions {
                    timestamps: true,
                    tail_lines: Some(2),
                    ..Default::default()
                },
                "2024-05-01T10:00:03.000000000Z three\n2024-05-01T10:00:05.000000000Z four\n",
            ),
        ];
        for (opts, want) in cases {
            assert_eq!(read_all(&path, opts.clone()).await, want, "{opts:?}");
        }
    }

    #[tokio::test]
    async fn follow_streams_appended_lines_until_the_container_stops() {
        use std::io::Write;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2024-05-01T10:00:01Z stdout F first\n2024-05-01T10:00:02Z stdout P hal",
        )
        .unwrap();
        let running = Arc::new(AtomicBool::new(true));
        let (tx, mut rx) = mpsc::channel(16);
        let r = running.clone();
        let p = path.clone();
        let task = tokio::spawn(async move {
            let opts = LogOptions {
                follow: true,
                ..Default::default()
            };
            stream(
                &p,
                &opts,
                move || {
                    let r = r.clone();
                    async move { r.load(Ordering::SeqCst) }
                },
                tx,
            )
            .await
        });
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"first\n"));
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"f\n2024-05-01T10:00:03Z stdout F -done\n")
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Bytes::from_static(b"half-done\n"));
        f.write_all(b"2024-05-01T10:00:04Z stdout F last words\n")
            .unwrap();
        running.store(false, Ordering::SeqCst);
        let mut rest = Vec::new();
        while let Some(b) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
        {
            rest.extend_from_slice(&b);
        }
        assert_eq!(rest, b"last words\n");
        task.await.unwrap().unwrap();
    }

    #[test]
    fn previous_attempt_file() {
        let dir = tempfile::tempdir().unwrap();
        for n in ["0.log", "1.log", "3.log", "notes.txt"] {
            std::fs::write(dir.path().join(n), "").unwrap();
        }
        assert_eq!(
            previous_file(&dir.path().join("3.log")),
            Some(dir.path().join("1.log"))
        );
        assert_eq!(
            previous_file(&dir.path().join("1.log")),
            Some(dir.path().join("0.log"))
        );
        assert_eq!(previous_file(&dir.path().join("0.log")), None);
    }
}
