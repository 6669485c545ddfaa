//! Container images built locally as "docker save" archives, which
//! `ctr images import` reads. There is no registry: the images a node's pods
//! need are part of the OS image.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{io, run, ImageError, Result};

/// One file to put in an image's single layer.
pub struct LayerFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// An image to build.
pub struct ImageSpec {
    /// Full reference, e.g. `localhost/cairn/pause:1`.
    pub reference: String,
    pub files: Vec<LayerFile>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub user: Option<String>,
}

fn layer_tar(files: &[LayerFile]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = crate::cpio::parent_dirs(files.iter().map(|f| f.path.as_str()));
    dirs.dedup();
    let werr = |e| ImageError::Io {
        path: PathBuf::from("<layer tar>"),
        source: e,
    };
    for d in dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(werr)?;
    }
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.mode);
        h.set_size(f.data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, f.path.trim_start_matches('/'), &f.data[..])
            .map_err(werr)?;
    }
    b.into_inner().map_err(werr)
}

/// Write `spec` as a docker-archive tarball at `out`.
pub fn write_docker_archive(spec: &ImageSpec, out: &Path) -> Result<()> {
    let layer = layer_tar(&spec.files)?;
    let diff_id = hex::encode(Sha256::digest(&layer));
    let mut config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
        "history": [{ "created_by": "cairn-image", "created": "1970-01-01T00:00:00Z" }],
        "created": "1970-01-01T00:00:00Z",
    });
    if let Some(u) = &spec.user {
        config["config"]["User"] = json!(u);
    }
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config_id = hex::encode(Sha256::digest(&config_bytes));
    let manifest = json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": [spec.reference],
        "Layers": [format!("{diff_id}/layer.tar")],
    }]);
    let file = std::fs::File::create(out).map_err(io(out))?;
    let mut b = tar::Builder::new(file);
    let mut add = |name: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data).map_err(io(out))
    };
    add(&format!("{config_id}.json"), &config_bytes)?;
    add(&format!("{diff_id}/layer.tar"), &layer)?;
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("json"),
    )?;
    b.into_inner().map_err(io(out))?;
    Ok(())
}

/// The pod sandbox image: a static C `pause` built with the host's gcc.
pub fn pause_image(repo_root: &Path, work: &Path) -> Result<ImageSpec> {
    let src = repo_root.join("image-build/oci/pause.c");
    let bin = work.join("pause");
    run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&src))?;
    Ok(ImageSpec {
        reference: "localhost/cairn/pause:1".into(),
        files: vec![LayerFile {
            path: "pause".into(),
            mode: 0o755,
            data: std::fs::read(&bin).map_err(io(&bin))?,
        }],
        entrypoint: vec!["/pause".into()],
        cmd: vec![],
        user: Some("65535".into()),
    })
}

/// The demo workload image: Debian's busybox-static with a page to serve.
pub fn hello_image(repo_root: &Path) -> Result<ImageSpec> {
    let busybox = Path::new("/bin/busybox");
    let page = repo_root.join("image-build/oci/index.html");
    Ok(ImageSpec {
        reference: "localhost/cairn/hello:demo".into(),
        files: vec![
            LayerFile {
                path: "bin/busybox".into(),
                mode: 0o755,
                data: std::fs::read(busybox).map_err(|e| ImageError::Io {
                    path: busybox.into(),
                    source: std::io::Error::new(e.kind(), format!("{e} (install busybox-static)")),
                })?,
            },
            LayerFile {
                path: "www/index.html".into(),
                mode: 0o644,
                data: std::fs::read(&page).map_err(io(&page))?,
            },
        ],
        entrypoint: vec![],
        cmd: vec![
            "/bin/busybox".into(),
            "httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/www".into(),
        ],
        user: Some("65534".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_archive_has_manifest_config_and_layer_with_matching_digests() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("img.tar");
        let spec = ImageSpec {
            reference: "localhost/cairn/test:1".into(),
            files: vec![LayerFile {
                path: "bin/x".into(),
                mode: 0o755,
                data: b"hi".to_vec(),
            }],
            entrypoint: vec!["/bin/x".into()],
            cmd: vec![],
            user: None,
        };
        write_docker_archive(&spec, &out).unwrap();
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut files = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            files.insert(name, data);
        }
        let manifest: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(manifest[0]["RepoTags"][0], "localhost/cairn/test:1");
        let layer_name = manifest[0]["Layers"][0].as_str().unwrap();
        let layer = &files[layer_name];
        let config: serde_json::Value =
            serde_json::from_slice(&files[manifest[0]["Config"].as_str().unwrap()]).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            format!("sha256:{}", hex::encode(Sha256::digest(layer)))
        );
        let mut inner = tar::Archive::new(&layer[..]);
        let names: Vec<String> = inner
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["bin/", "bin/x"]);
    }
}
