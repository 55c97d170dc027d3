//! The object-storage backend of [`Store`]: S3 and S3-compatible servers (MinIO, Ceph RGW, Cloudflare R2,
//! moto …) through the `object_store` crate, named by `s3://bucket/prefix`.
//!
//! Configuration is the usual AWS environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION` (or `AWS_DEFAULT_REGION`), and `AWS_ENDPOINT_URL` for a server other
//! than AWS (plain `http://` endpoints are allowed when named explicitly). Every value is one object: a PUT is
//! atomic on S3, so a value is never half-visible; conditional writes use `If-None-Match: *` and `If-Match:
//! <etag>`, which AWS S3, MinIO, R2 and moto honour. A tree is one tar object (`<key>.tar`), uploaded in parts
//! and completed atomically, and unpacked on demand into a local cache.
//!
//! `object_store` is asynchronous; this backend runs it on a small runtime of its own, so callers on any thread
//! (handlers inside the server's runtime, job threads) can wait for it without blocking that runtime's
//! progress on the store.

use super::blob::{Conflict, Meta, PutMode, Store, Version};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutOptions, PutPayload, UpdateVersion};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// S3-compatible object storage under one bucket and prefix.
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Store({})", self.url)
    }
}

/// Bucket and prefix of an `s3://bucket[/prefix]` address.
pub fn parse_s3_url(url: &str) -> Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .with_context(|| format!("`{url}` is not an s3://bucket/prefix address"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    if !bucket_ok {
        bail!("`{bucket}` is not a valid bucket name (3-63 lowercase letters, digits, '-', '.')");
    }
    let prefix = prefix.trim_matches('/').to_string();
    if !prefix.is_empty() && !super::blob::valid_key(&format!("{prefix}/x")) {
        bail!("`{prefix}` is not a valid prefix (segments of letters, digits, '-', '_', '.')");
    }
    Ok((bucket.to_string(), prefix))
}

impl S3Store {
    /// Connects to `s3://bucket/prefix` with the AWS environment variables (see the module comment).
    pub fn open(url: &str) -> Result<Self> {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        Self::open_with(url, &env)
    }

    /// Connects to `s3://bucket/prefix` configured by `config`: pairs named like the AWS environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, …); names object_store does not know are ignored.
    pub fn open_with(url: &str, config: &[(String, String)]) -> Result<Self> {
        let (bucket, prefix) = parse_s3_url(url)?;
        // One process-wide TLS provider (ring); a second call finds it installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Client options first: `with_client_options` replaces them whole, and the configuration below (e.g.
        // AWS_ALLOW_HTTP) adds to them.
        let options = object_store::ClientOptions::new()
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(5));
        let retry = object_store::RetryConfig {
            max_retries: 4,
            retry_timeout: Duration::from_secs(30),
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_retry(retry);
        for (k, v) in config {
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(key, v);
            }
        }
        builder = builder.with_bucket_name(&bucket);
        let get = |name: &str| {
            config
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let endpoint = get("AWS_ENDPOINT_URL").or_else(|| get("AWS_ENDPOINT"));
        if endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        if get("AWS_REGION").is_none() && get("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .build()
            .with_context(|| format!("cannot configure object storage for {url}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("store-io")
            .enable_all()
            .build()?;
        let shown = match &endpoint {
            Some(e) => format!("s3://{bucket}/{prefix} at {e}"),
            None => format!("s3://{bucket}/{prefix}"),
        };
        Ok(Self {
            store: Arc::new(store),
            prefix,
            url: shown,
            runtime,
        })
    }

    fn object(&self, key: &str) -> Result<ObjectPath> {
        if !super::blob::valid_key(key) {
            bail!("invalid store key `{key}`");
        }
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }

    fn key_of(&self, p: &ObjectPath) -> Option<String> {
        let s = p.as_ref();
        if self.prefix.is_empty() {
            return Some(s.to_string());
        }
        s.strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
            .map(str::to_string)
    }

    /// Runs `fut` on the store's runtime and waits for it, from any thread.
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T> {
        let handle = self.runtime.spawn(fut);
        futures::executor::block_on(handle).context("an object-storage request was aborted")
    }

    fn meta(&self, key: &str, m: &object_store::ObjectMeta) -> Meta {
        Meta {
            key: key.to_string(),
            version: version_of(m.e_tag.as_deref(), m.version.as_deref()),
            size: m.size,
            modified_ms: m.last_modified.timestamp_millis().max(0) as u64,
        }
    }

    fn tree_object(&self, key: &str) -> Result<ObjectPath> {
        self.object(&format!("{key}.tar"))
    }
}

fn version_of(e_tag: Option<&str>, version: Option<&str>) -> Version {
    Version(e_tag.or(version).unwrap_or("").to_string())
}

fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Store for S3Store {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        let got = self.block(async move {
            let r = store.get(&path).await?;
            let v = version_of(r.meta.e_tag.as_deref(), r.meta.version.as_deref());
            Ok::<_, object_store::Error>((r.bytes().await?.to_vec(), v))
        })?;
        match got {
            Ok(x) => Ok(Some(x)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read `{key}` from {}", self.url)),
        }
    }

    fn head(&self, key: &str) -> Result<Option<Meta>> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        match self.block(async move { store.head(&path).await })? {
            Ok(m) => Ok(Some(self.meta(key, &m))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read `{key}` from {}", self.url)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<Version> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        let opts = PutOptions {
            mode: match mode {
                PutMode::Overwrite => object_store::PutMode::Overwrite,
                PutMode::Create => object_store::PutMode::Create,
                PutMode::Update(v) => object_store::PutMode::Update(UpdateVersion {
                    e_tag: Some(v.0),
                    version: None,
                }),
            },
            ..Default::default()
        };
        let payload = PutPayload::from(bytes.to_vec());
        match self.block(async move { store.put_opts(&path, payload, opts).await })? {
            Ok(r) => Ok(version_of(r.e_tag.as_deref(), r.version.as_deref())),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(Conflict {
                key: key.to_string(),
            }
            .into()),
            Err(e) => Err(e).with_context(|| format!("cannot write `{key}` to {}", self.url)),
        }
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<Version> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        let local = file.to_path_buf();
        // Up to 5 MiB in one PUT, larger files in parts; either way the object appears only when complete.
        self.block(async move {
            let mut src = tokio::fs::File::open(&local)
                .await
                .with_context(|| format!("cannot read {}", local.display()))?;
            let mut w = object_store::buffered::BufWriter::with_capacity(
                store.clone(),
                path.clone(),
                5 << 20,
            );
            let copied = tokio::io::copy(&mut src, &mut w).await;
            if let Err(e) = copied {
                let _ = w.abort().await;
                return Err(anyhow::Error::from(e).context("upload failed"));
            }
            w.shutdown().await.context("upload failed")?;
            let m = store.head(&path).await?;
            Ok(version_of(m.e_tag.as_deref(), m.version.as_deref()))
        })?
        .with_context(|| format!("cannot write `{key}` to {}", self.url))
    }

    fn get_file(&self, key: &str, dest: &Path) -> Result<bool> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        let dir = dest.parent().context("destination has a folder")?;
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".download.")
            .suffix(super::TEMP_SUFFIX)
            .tempfile_in(dir)?;
        let (file, tmp_path) = tmp.into_parts();
        let found = self.block(async move {
            let r = match store.get(&path).await {
                Ok(r) => r,
                Err(e) if not_found(&e) => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e)),
            };
            let mut out = tokio::fs::File::from_std(file);
            let mut stream = r.into_stream();
            while let Some(chunk) = stream.next().await {
                out.write_all(&chunk?).await?;
            }
            out.sync_all().await?;
            Ok(true)
        })??;
        if found {
            tmp_path.persist(dest).map_err(|e| e.error)?;
        }
        Ok(found)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let (store, path) = (self.store.clone(), self.object(key)?);
        match self.block(async move { store.delete(&path).await })? {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot delete `{key}` from {}", self.url)),
        }
    }

    fn list(&self, prefix: &str, after: Option<&str>) -> Result<Vec<Meta>> {
        let folder = prefix.trim_end_matches('/');
        if !super::blob::valid_key(&format!("{folder}/x")) {
            bail!("invalid list prefix `{prefix}`");
        }
        let dir = if self.prefix.is_empty() {
            ObjectPath::from(folder)
        } else {
            ObjectPath::from(format!("{}/{folder}", self.prefix))
        };
        let offset = after.map(|a| self.object(a)).transpose()?;
        let store = self.store.clone();
        let metas = self.block(async move {
            let stream = match &offset {
                Some(o) => store.list_with_offset(Some(&dir), o),
                None => store.list(Some(&dir)),
            };
            stream.collect::<Vec<_>>().await
        })?;
        let mut out = Vec::new();
        for m in metas {
            let m = m.with_context(|| format!("cannot list `{prefix}` in {}", self.url))?;
            let Some(key) = self.key_of(&m.location) else {
                continue;
            };
            if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                out.push(self.meta(&key, &m));
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn put_tree(&self, key: &str, dir: &Path) -> Result<()> {
        let parent = dir.parent().context("tree has a parent folder")?;
        let tar = tempfile::Builder::new()
            .prefix(".tree.")
            .suffix(super::TEMP_SUFFIX)
            .tempfile_in(parent)?;
        {
            let mut b = tar::Builder::new(tar.as_file());
            b.follow_symlinks(false);
            b.append_dir_all(".", dir)
                .with_context(|| format!("cannot pack {}", dir.display()))?;
            b.finish()?;
        }
        self.put_file(&format!("{key}.tar"), tar.path())?;
        Ok(())
    }

    fn get_tree(&self, key: &str, cache: &Path) -> Result<Option<PathBuf>> {
        let Some(meta) = self.head(&format!("{key}.tar"))? else {
            return Ok(None);
        };
        let dest = cache.join(key);
        let marker = cache.join(format!("{key}.version"));
        let cached = std::fs::read_to_string(&marker).ok();
        if dest.is_dir() && cached.as_deref() == Some(meta.version.0.as_str()) {
            return Ok(Some(dest));
        }
        let parent = dest
            .parent()
            .context("tree has a parent folder")?
            .to_path_buf();
        std::fs::create_dir_all(&parent)?;
        let tar = parent.join(format!(
            ".{}.tar.tmp",
            dest.file_name()
                .map_or("tree".into(), |n| n.to_string_lossy())
        ));
        if !self.get_file(&format!("{key}.tar"), &tar)? {
            return Ok(None);
        }
        let unpacked = super::atomic_dir(&dest, true, |d| {
            let f = std::fs::File::open(&tar)?;
            tar::Archive::new(f)
                .unpack(d)
                .with_context(|| format!("cannot unpack `{key}`"))
        });
        let _ = std::fs::remove_file(&tar);
        unpacked?;
        super::atomic_write(&marker, meta.version.0.as_bytes())?;
        Ok(Some(dest))
    }

    fn has_tree(&self, key: &str) -> Result<bool> {
        self.tree_object(key)?;
        Ok(self.head(&format!("{key}.tar"))?.is_some())
    }

    fn delete_tree(&self, key: &str) -> Result<bool> {
        let existed = self.has_tree(key)?;
        if existed {
            self.delete(&format!("{key}.tar"))?;
        }
        Ok(existed)
    }

    fn location(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_s3_url("s3://my-bucket/fleet/a").unwrap(),
            ("my-bucket".into(), "fleet/a".into())
        );
        assert_eq!(
            parse_s3_url("s3://my-bucket").unwrap(),
            ("my-bucket".into(), String::new())
        );
        assert_eq!(
            parse_s3_url("s3://my-bucket/p/").unwrap(),
            ("my-bucket".into(), "p".into())
        );
        assert!(parse_s3_url("gs://x/y").is_err());
        assert!(parse_s3_url("s3://B/x").is_err());
        assert!(parse_s3_url("s3://bucket/../x").is_err());
    }
}
