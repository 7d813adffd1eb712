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
//! Rotation is the kubelet's job, not the runtime's: [`run_rotation`] checks every running
//! container's log about every 10 s and, once it exceeds `containerLogMaxSize`, renames it
//! to `<file>.<YYYYMMDD-hhmmss>`, gzips the older rotated files, keeps at most
//! `containerLogMaxFiles` files in all, and asks the runtime (CRI `ReopenContainerLog`)
//! to start a new file. Readers see the new file; a follower notices the replaced file
//! and continues with it.
//!
//! Depends on: `agent::cri` (for rotation only; for reading, the caller says whether the
//! container still runs). Must not depend on: `apiserver`, `store`.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
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

/// The file offsets where the last `n` complete lines (a line being a run of partial
/// chunks ended by a full one) begin and where they end; the start is the end of the
/// file for `n == 0`.
async fn tail_offset(path: &Path, n: u64) -> Result<(u64, u64), Error> {
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
    let start = if n == 0 {
        offset
    } else {
        starts.front().copied().unwrap_or(offset)
    };
    Ok((start, offset))
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
    // Without follow, a tail ends where the counted lines end: a container writing fast
    // must not stretch `--tail=N` beyond N lines.
    let (start, limit) = match opts.tail_lines {
        Some(n) => {
            let (start, end) = tail_offset(path, n).await?;
            (start, (!opts.follow).then_some(end))
        }
        None => (0, None),
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut inode = file.metadata().await.ok().map(|m| m.ino());
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
            if render.exhausted() || limit.is_some_and(|end| position >= end) {
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
        // A truncated or replaced (rotated) file starts over.
        if let Ok(meta) = tokio::fs::metadata(path).await
            && (meta.len() < position || Some(meta.ino()) != inode)
        {
            inode = Some(meta.ino());
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

/// When container logs are rotated (`--kubelet-arg container-log-max-size=…` and
/// `container-log-max-files=…`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// A log larger than this is rotated (default 10Mi).
    pub max_size: u64,
    /// The most files one container keeps, the current one included (default 5, at
    /// least 2).
    pub max_files: usize,
}

impl Default for RotationPolicy {
    fn default() -> RotationPolicy {
        RotationPolicy {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// How often running containers' logs are checked for rotation.
pub const ROTATION_CHECK: Duration = Duration::from_secs(10);

const GZ: &str = ".gz";
const TMP: &str = ".tmp";

/// The rotated files of `log` (`<log>.<timestamp>[.gz]`), oldest first; leftover
/// temporary files are not included.
pub fn rotated_files(log: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            (n.starts_with(&prefix) && !n.ends_with(TMP)).then(|| e.path())
        })
        .collect();
    // The timestamp suffix (YYYYMMDD-hhmmss) sorts chronologically.
    out.sort();
    out
}

async fn gzip_file(path: &Path) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let gz = PathBuf::from(format!("{}{GZ}", path.display()));
    let tmp = PathBuf::from(format!("{}{TMP}", gz.display()));
    let mut input = tokio::fs::File::open(path).await?;
    let out = tokio::fs::File::create(&tmp).await?;
    let mut enc = async_compression::tokio::write::GzipEncoder::new(out);
    tokio::io::copy(&mut input, &mut enc).await?;
    enc.shutdown().await?;
    tokio::fs::rename(&tmp, &gz).await?;
    tokio::fs::remove_file(path).await
}

/// Rotates `log` if it exceeds the policy's size: drops the oldest rotated files so that
/// at most `max_files` remain afterwards, gzips the rotated files not yet compressed,
/// renames the log to `<log>.<YYYYMMDD-hhmmss>` and calls `reopen` (the runtime's
/// `ReopenContainerLog`); if that fails the rename is undone. Returns whether it rotated.
pub async fn rotate_if_needed<F, Fut>(
    log: &Path,
    policy: RotationPolicy,
    now: jiff::Timestamp,
    reopen: F,
) -> Result<bool, Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| Error::Io { path, source }
    };
    let size = match tokio::fs::metadata(log).await {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(log)(e)),
    };
    if size < policy.max_size {
        return Ok(false);
    }
    // Leftovers of an interrupted compression.
    if let (Some(dir), Some(name)) = (log.parent(), log.file_name().and_then(|n| n.to_str())) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&format!("{name}.")) && n.ends_with(TMP) {
                let _ = tokio::fs::remove_file(e.path()).await;
            }
        }
    }
    let mut rotated = rotated_files(log);
    let keep = policy.max_files.max(2) - 2;
    while rotated.len() > keep {
        let oldest = rotated.remove(0);
        tokio::fs::remove_file(&oldest).await.map_err(io(&oldest))?;
    }
    for r in rotated
        .iter()
        .filter(|r| !r.to_string_lossy().ends_with(GZ))
    {
        gzip_file(r).await.map_err(io(r))?;
    }
    let stamp = now
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    let mut target = PathBuf::from(format!("{}.{stamp}", log.display()));
    let mut n = 1;
    while target.exists() || PathBuf::from(format!("{}{GZ}", target.display())).exists() {
        target = PathBuf::from(format!("{}.{stamp}-{n}", log.display()));
        n += 1;
    }
    tokio::fs::rename(log, &target).await.map_err(io(log))?;
    if let Err(message) = reopen().await {
        // The runtime still writes into the renamed file: put it back.
        let _ = tokio::fs::rename(&target, log).await;
        return Err(Error::Io {
            path: log.display().to_string(),
            source: std::io::Error::other(format!("reopening the container log: {message}")),
        });
    }
    Ok(true)
}

/// Checks every running container's log every [`ROTATION_CHECK`] and rotates it per
/// `policy`, until `shutdown`.
pub async fn run_rotation(
    mut cri: super::cri::Cri,
    policy: RotationPolicy,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use k8s_cri::v1 as cri_api;
    let mut tick = tokio::time::interval(ROTATION_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let containers = match cri.containers(None).await {
            Ok(c) => c,
            Err(err) => {
                tracing::debug!(%err, "listing containers for log rotation");
                continue;
            }
        };
        for c in containers
            .iter()
            .filter(|c| c.state == cri_api::ContainerState::ContainerRunning as i32)
        {
            let Ok(status) = cri.container_status(&c.id).await else {
                continue;
            };
            if status.log_path.is_empty() {
                continue;
            }
            let path = PathBuf::from(&status.log_path);
            let mut reopen_cri = cri.clone();
            let id = c.id.clone();
            let reopen = || async move {
                reopen_cri
                    .runtime()
                    .reopen_container_log(cri_api::ReopenContainerLogRequest { container_id: id })
                    .await
                    .map(|_| ())
                    .map_err(|s| s.message().to_string())
            };
            match rotate_if_needed(&path, policy, jiff::Timestamp::now(), reopen).await {
                Ok(true) => {
                    tracing::debug!(container = %c.id, path = %path.display(), "rotated container log")
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(container = %c.id, %err, "rotating container log"),
            }
        }
    }
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

    #[tokio::test]
    async fn rotation_keeps_max_files_and_compresses() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        let policy = RotationPolicy {
            max_size: 100,
            max_files: 3,
        };
        let t0: jiff::Timestamp = "2024-05-01T10:00:00Z".parse().unwrap();
        let ok = || async { Ok::<(), String>(()) };
        // Small: nothing happens.
        std::fs::write(&log, "x".repeat(50)).unwrap();
        assert!(!rotate_if_needed(&log, policy, t0, ok).await.unwrap());
        for i in 0..4 {
            std::fs::write(&log, format!("{i}").repeat(200)).unwrap();
            let at = t0 + jiff::SignedDuration::from_secs(i);
            assert!(rotate_if_needed(&log, policy, at, ok).await.unwrap());
            assert!(!log.exists(), "the runtime writes the new file");
        }
        let names: Vec<String> = rotated_files(&log)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        // max_files 3 = the current file + two rotated ones; the older one is compressed.
        assert_eq!(names, ["0.log.20240501-100002.gz", "0.log.20240501-100003"]);
        let gz = std::fs::read(dir.path().join(&names[0])).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        // A failed reopen puts the file back.
        std::fs::write(&log, "y".repeat(200)).unwrap();
        let fail = || async { Err::<(), String>("no".into()) };
        assert!(rotate_if_needed(&log, policy, t0, fail).await.is_err());
        assert_eq!(std::fs::read(&log).unwrap().len(), 200);
        // Rotated files are never taken for a previous attempt.
        assert_eq!(previous_file(&log), None);
    }
}
