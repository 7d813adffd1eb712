//! Just enough of the tar format for image archives: a streaming reader over any
//! `AsyncRead` (ustar, GNU long names and sizes, pax `path`/`size`/`linkpath` records),
//! so multi-gigabyte image tarballs are never held in memory, and a writer for small,
//! reproducible archives built in memory (the pause image, test images).

use tokio::io::{AsyncRead, AsyncReadExt};

const BLOCK: usize = 512;
/// Extension records (long names, pax headers) larger than this are refused.
const MAX_EXTENSION: u64 = 1 << 20;

/// A malformed archive or a failed read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the archive failed.
    #[error("reading the archive: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is not a tar archive or is damaged.
    #[error("not a valid tar archive: {0}")]
    Malformed(String),
}

/// What a tar entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link to the given target.
    Symlink(String),
    /// A hard link to the given (archive) path.
    Link(String),
    /// Anything else (devices, fifos).
    Other,
}

/// One entry's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The path, without a leading `./` or `/`.
    pub path: String,
    /// The size of the entry's data.
    pub size: u64,
    /// The entry type.
    pub kind: Kind,
    /// The permission bits.
    pub mode: u32,
}

/// Streams the entries of a tar archive.
pub struct Reader<R> {
    inner: R,
    /// Data bytes of the current entry not yet read.
    remaining: u64,
    /// Padding after the current entry's data.
    padding: u64,
    done: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the archive `inner`.
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            remaining: 0,
            padding: 0,
            done: false,
        }
    }

    /// The input, positioned after what was read so far.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry, skipping what is left of the current one; `None` at the end.
    pub async fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut pax_path: Option<String> = None;
        let mut pax_link: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            self.skip_rest().await?;
            if self.done {
                return Ok(None);
            }
            let mut header = [0u8; BLOCK];
            if !self.read_block(&mut header).await? {
                // A missing end-of-archive marker is tolerated, as GNU tar does.
                self.done = true;
                return Ok(None);
            }
            if header.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&header)?;
            let typeflag = header[156];
            let size = parse_number(&header[124..136])?;
            self.remaining = size;
            self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
            match typeflag {
                b'L' | b'K' | b'x' | b'g' => {
                    if size > MAX_EXTENSION {
                        return Err(Error::Malformed(format!(
                            "extension header of {size} bytes"
                        )));
                    }
                    let mut data = vec![0u8; size as usize];
                    self.read_data_exact(&mut data).await?;
                    match typeflag {
                        b'L' => long_name = Some(c_string(&data)),
                        b'K' => long_link = Some(c_string(&data)),
                        b'x' => {
                            for (key, value) in parse_pax(&data)? {
                                match key.as_str() {
                                    "path" => pax_path = Some(value),
                                    "linkpath" => pax_link = Some(value),
                                    "size" => {
                                        pax_size = Some(value.parse().map_err(|_| {
                                            Error::Malformed(format!("pax size {value:?}"))
                                        })?)
                                    }
                                    _ => {}
                                }
                            }
                        }
                        _ => {} // global pax headers carry nothing we use
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(s) = pax_size {
                self.remaining = s;
                self.padding = (BLOCK as u64 - s % BLOCK as u64) % BLOCK as u64;
            }
            let path = match pax_path.or(long_name) {
                Some(p) => p,
                None => {
                    let name = c_string(&header[0..100]);
                    let prefix = if &header[257..262] == b"ustar" {
                        c_string(&header[345..500])
                    } else {
                        String::new()
                    };
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                }
            };
            let link = pax_link
                .or(long_link)
                .unwrap_or_else(|| c_string(&header[157..257]));
            let kind = match typeflag {
                b'0' | 0 | b'7' => Kind::File,
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink(link),
                b'1' => Kind::Link(clean_path(&link)),
                _ => Kind::Other,
            };
            let kind = if kind == Kind::File && path.ends_with('/') {
                Kind::Dir
            } else {
                kind
            };
            let size = if matches!(kind, Kind::File) {
                self.remaining
            } else {
                0
            };
            let mode = (parse_number(&header[100..108])? & 0o7777) as u32;
            return Ok(Some(Entry {
                path: clean_path(&path),
                size,
                kind,
                mode,
            }));
        }
    }

    /// Reads data of the current entry into `buf`; 0 at the entry's end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(Error::Malformed("the archive ends inside an entry".into()));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// Fills `buf` as far as the current entry allows; returns how many bytes it holds.
    pub async fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut filled = 0;
        while filled < buf.len() {
            let n = self.read(&mut buf[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        Ok(filled)
    }

    async fn read_data_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        if self.read_full(buf).await? != buf.len() {
            return Err(Error::Malformed("short extension header".into()));
        }
        Ok(())
    }

    async fn skip_rest(&mut self) -> Result<(), Error> {
        let mut scratch = [0u8; 8192];
        let mut left = self.remaining + self.padding;
        while left > 0 {
            let want = scratch
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut scratch[..want]).await?;
            if n == 0 {
                return Err(Error::Malformed("the archive ends inside an entry".into()));
            }
            left -= n as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }

    /// Reads one header block; `false` at a clean end of input.
    async fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, Error> {
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.inner.read(&mut block[filled..]).await?;
            if n == 0 {
                if filled == 0 {
                    return Ok(false);
                }
                return Err(Error::Malformed("truncated header".into()));
            }
            filled += n;
        }
        Ok(true)
    }
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Drops leading `./` and `/` and trailing `/`.
fn clean_path(p: &str) -> String {
    let mut s = p;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    s.trim_end_matches('/').to_string()
}

/// Octal (NUL/space padded) or GNU base-256 numbers.
fn parse_number(field: &[u8]) -> Result<u64, Error> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| Error::Malformed("size overflows".into()))?;
        }
        return Ok(v);
    }
    let text = c_string(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| Error::Malformed(format!("bad number {text:?}")))
}

fn verify_checksum(h: &[u8; BLOCK]) -> Result<(), Error> {
    let stored = parse_number(&h[148..156])?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum();
    if stored != sum {
        return Err(Error::Malformed("header checksum mismatch".into()));
    }
    Ok(())
}

/// Parses pax records: `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let bad = || Error::Malformed("bad pax record".into());
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[sp + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        out.push((
            String::from_utf8_lossy(&record[..eq]).into_owned(),
            String::from_utf8_lossy(&record[eq + 1..]).into_owned(),
        ));
        data = &data[len..];
    }
    Ok(out)
}

/// Builds a small tar archive in memory: ustar headers, owner root, mtime 0, so the same
/// input always gives the same bytes (and the same digest).
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    /// An empty archive.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Builder {
        self.header(path, mode, data.len() as u64, b'0', "");
        self.buf.extend_from_slice(data);
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.buf.resize(self.buf.len() + pad, 0);
        self
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Builder {
        self.header(
            &format!("{}/", path.trim_end_matches('/')),
            mode,
            0,
            b'5',
            "",
        );
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Builder {
        self.header(path, 0o777, 0, b'2', target);
        self
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 2 * BLOCK, 0);
        self.buf
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, typeflag: u8, link: &str) {
        if path.len() > 100 || link.len() > 100 {
            // Names this long get a GNU long-name record first.
            let (flag, text) = if path.len() > 100 {
                (b'L', path)
            } else {
                (b'K', link)
            };
            let mut data = text.as_bytes().to_vec();
            data.push(0);
            self.raw_header("././@LongLink", 0o644, data.len() as u64, flag, "");
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.buf.extend_from_slice(&data);
            self.buf.resize(self.buf.len() + pad, 0);
        }
        self.raw_header(path, mode, size, typeflag, link);
    }

    fn raw_header(&mut self, path: &str, mode: u32, size: u64, typeflag: u8, link: &str) {
        let mut h = [0u8; BLOCK];
        let put = |h: &mut [u8; BLOCK], at: usize, len: usize, s: &[u8]| {
            let n = s.len().min(len);
            h[at..at + n].copy_from_slice(&s[..n]);
        };
        put(&mut h, 0, 100, path.as_bytes());
        put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
        put(&mut h, 108, 8, b"0000000\0");
        put(&mut h, 116, 8, b"0000000\0");
        put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
        put(&mut h, 136, 12, b"00000000000\0");
        h[156] = typeflag;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 8, b"ustar\x0000");
        put(&mut h, 265, 32, b"root");
        put(&mut h, 297, 32, b"root");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        self.buf.extend_from_slice(&h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn entries(data: &[u8]) -> Vec<(Entry, Vec<u8>)> {
        let mut r = Reader::new(data);
        let mut out = Vec::new();
        while let Some(e) = r.next_entry().await.unwrap() {
            let mut body = vec![0u8; e.size as usize];
            assert_eq!(r.read_full(&mut body).await.unwrap(), body.len());
            out.push((e, body));
        }
        out
    }

    #[tokio::test]
    async fn round_trips_files_dirs_links_and_long_names() {
        let long = format!("blobs/sha256/{}", "a".repeat(120));
        let mut b = Builder::new();
        b.dir("./bin", 0o755)
            .file("./bin/prog", 0o755, b"#!/bin/sh\necho hi\n")
            .symlink("bin/sh", "busybox")
            .file(&long, 0o644, &vec![7u8; 1500])
            .file("empty", 0o644, b"");
        let data = b.finish();
        assert_eq!(data.len() % BLOCK, 0);
        let got = entries(&data).await;
        let summary: Vec<(String, Kind, usize)> = got
            .iter()
            .map(|(e, body)| (e.path.clone(), e.kind.clone(), body.len()))
            .collect();
        assert_eq!(
            got.iter().map(|(e, _)| e.mode).collect::<Vec<_>>(),
            vec![0o755, 0o755, 0o777, 0o644, 0o644]
        );
        assert_eq!(
            summary,
            vec![
                ("bin".to_string(), Kind::Dir, 0),
                ("bin/prog".to_string(), Kind::File, 18),
                ("bin/sh".to_string(), Kind::Symlink("busybox".into()), 0),
                (long.clone(), Kind::File, 1500),
                ("empty".to_string(), Kind::File, 0),
            ]
        );
        assert_eq!(got[1].1, b"#!/bin/sh\necho hi\n");
        assert!(got[3].1.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn skips_unread_data_and_reads_pax_paths() {
        let mut b = Builder::new();
        let pax = "31 path=very/long/pax/name.txt\n";
        assert_eq!(pax.len(), 31);
        b.raw_header("PaxHeaders/x", 0o644, pax.len() as u64, b'x', "");
        b.buf.extend_from_slice(pax.as_bytes());
        b.buf.resize(b.buf.len() + BLOCK - pax.len(), 0);
        b.file("short", 0o644, b"payload");
        b.file("second", 0o644, &[1u8; 700]);
        let data = b.finish();
        let mut r = Reader::new(&data[..]);
        let first = r.next_entry().await.unwrap().unwrap();
        assert_eq!(first.path, "very/long/pax/name.txt");
        assert_eq!(first.size, 7);
        // Do not read the data: the next call skips it and its padding.
        let second = r.next_entry().await.unwrap().unwrap();
        assert_eq!((second.path.as_str(), second.size), ("second", 700));
        let mut buf = [0u8; 100];
        assert_eq!(r.read_full(&mut buf).await.unwrap(), 100);
        assert!(r.next_entry().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rejects_damaged_archives() {
        let mut b = Builder::new();
        b.file("f", 0o644, b"data");
        let mut data = b.finish();
        data[0] = b'g'; // breaks the checksum
        let err = Reader::new(&data[..]).next_entry().await.unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");

        let mut b = Builder::new();
        b.file("f", 0o644, &[0u8; 2000]);
        let data = b.finish();
        let mut r = Reader::new(&data[..1024]);
        r.next_entry().await.unwrap().unwrap();
        assert!(
            r.next_entry().await.is_err(),
            "truncated data must be an error"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"00000001750\0").unwrap(), 1000);
        assert_eq!(parse_number(b"     17 \0\0\0\0").unwrap(), 15);
        assert_eq!(
            parse_number(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap(),
            65536
        );
        assert!(parse_number(b"9\0\0\0\0\0\0\0\0\0\0\0").is_err());
    }
}
