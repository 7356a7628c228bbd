//! Warehouse models for tests: a manifest of the real YOLOX model (input, output, labels and
//! self-test from the repository's `models/manifest.toml`), and registering one with its files
//! in a running hub over HTTP.

use std::path::PathBuf;

use csb_wire::model::{Expected, ModelManifest, PackageSelfTest};
use sha2::{Digest, Sha256};

use crate::process::{media, root, Hub};

pub fn sha(b: &[u8]) -> String {
    csb_wire::sign::hex_lower(&Sha256::digest(b))
}

/// The real model file (`make setup` puts it in models/).
pub fn model_file() -> PathBuf {
    let p = root().join("models/yolox_nano.onnx");
    assert!(p.is_file(), "{} is missing: run `make setup`", p.display());
    p
}

/// The self-test picture of the repository's manifest (`make setup` puts it in .cache/media).
pub fn selftest_image() -> PathBuf {
    media("pexels_double_decker_bus.jpg")
}

/// The repository's COCO labels, in the model's order.
pub fn coco_labels() -> Vec<String> {
    std::fs::read_to_string(root().join("models/coco80.txt"))
        .expect("models/coco80.txt")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A manifest for `model` and `image` with the repository manifest's input, output, labels
/// and self-test expectations (models/manifest.toml).
pub fn manifest(name: &str, version: &str, model: &[u8], image: &[u8]) -> ModelManifest {
    let local: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("models/manifest.toml")).expect("manifest.toml"),
    )
    .expect("manifest.toml parses");
    let entry = &local["models"][0];
    let expect: Vec<Expected> = entry["selftest"]["expect"]
        .clone()
        .try_into()
        .expect("self-test expectations");
    ModelManifest {
        name: name.into(),
        version: version.into(),
        decoder: entry["decoder"].clone().try_into().expect("decoder"),
        labels: coco_labels(),
        input: entry["input"].clone().try_into().expect("input"),
        output: entry["output"].clone().try_into().expect("output"),
        sha256: sha(model),
        bytes: model.len() as u64,
        license: Some("Apache-2.0".into()),
        origin: Some("e2e".into()),
        selftest: PackageSelfTest {
            image_sha256: sha(image),
            image_bytes: image.len() as u64,
            expect,
        },
    }
}

/// A manifest for `model` and `image` with the input, output, decoder, labels (its labels file),
/// licence and self-test expectations of the repository manifest's entry `entry`
/// (models/manifest.toml), e.g. `centerface`.
pub fn manifest_of(
    entry: &str,
    name: &str,
    version: &str,
    model: &[u8],
    image: &[u8],
) -> ModelManifest {
    let local: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("models/manifest.toml")).expect("manifest.toml"),
    )
    .expect("manifest.toml parses");
    let e = local["models"]
        .as_array()
        .expect("[[models]]")
        .iter()
        .find(|m| m["name"].as_str() == Some(entry))
        .unwrap_or_else(|| panic!("models/manifest.toml has no model `{entry}`"));
    let labels_file = root()
        .join("models")
        .join(e["labels"].as_str().expect("labels"));
    let labels = std::fs::read_to_string(&labels_file)
        .unwrap_or_else(|err| panic!("{}: {err}", labels_file.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    ModelManifest {
        name: name.into(),
        version: version.into(),
        decoder: e["decoder"].clone().try_into().expect("decoder"),
        labels,
        input: e["input"].clone().try_into().expect("input"),
        output: e["output"].clone().try_into().expect("output"),
        sha256: sha(model),
        bytes: model.len() as u64,
        license: e
            .get("license")
            .and_then(|l| l.as_str())
            .map(str::to_string),
        origin: Some("e2e".into()),
        selftest: PackageSelfTest {
            image_sha256: sha(image),
            image_bytes: image.len() as u64,
            expect: e["selftest"]["expect"]
                .clone()
                .try_into()
                .expect("self-test expectations"),
        },
    }
}

/// Registers `m` in `hub` with its two files, as the token issued as `token` (an operator):
/// the manifest, then `files/model` and `files/selftest`. Panics on any refusal.
pub async fn register(hub: &Hub, token: &str, m: &ModelManifest, model: &[u8], image: &[u8]) {
    let base = format!("/api/v1/models/{}/{}", m.name, m.version);
    let (status, body) = hub
        .put_as(
            token,
            &base,
            &serde_json::to_value(m).expect("manifest JSON"),
        )
        .await;
    assert!(
        status == 200 || status == 201,
        "register {base}: {status} {body}"
    );
    for (kind, bytes) in [("model", model), ("selftest", image)] {
        let resp = crate::http::client()
            .put(hub.url(&format!("{base}/files/{kind}")))
            .bearer_auth(hub.token_of(token))
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap_or_else(|e| panic!("upload {base}/files/{kind}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "upload {base}/files/{kind}: {status} {text}"
        );
    }
}
