//! The county model over the API: a hub started with the shipped sample county serves it at
//! `GET /api/v1/county` (towns, roads, zones with GeoJSON geometry, the device inventory); one
//! without a county answers 404 naming how to load one.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_county_is_served_with_geometry_and_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start_county(dir.path(), free_port()).await;
    let c = hub.get("/api/v1/county").await;
    assert_eq!(c["county"]["id"], "yuexi", "{c:#}");
    assert_eq!(c["county"]["sample"], true);
    let towns = c["towns"].as_array().unwrap();
    let tiantang = towns.iter().find(|t| t["id"] == "tiantang").unwrap();
    assert_eq!(tiantang["name"], "天堂镇");
    assert_eq!(tiantang["geometry"]["type"], "Polygon");
    let cam = c["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == "yuexi/gw-demo-01/cam-tiantang-01")
        .unwrap()
        .clone();
    assert_eq!(cam["lines"]["road-east"], "rd-tiantang-ave-n", "{cam:#}");
    assert_eq!(cam["location"].as_array().unwrap().len(), 2);
    hub.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), free_port()).await;
    let (status, body) = hub.get_status("/api/v1/county").await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("--county"),
        "{body}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_county_stops_the_hub_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let county = tempfile::tempdir().unwrap();
    std::fs::write(
        county.path().join("county.toml"),
        "[county]\nid = \"x\"\nname = \"x\"\nseat = [30.85, 116.36]\n",
    )
    .unwrap();
    let config = cloud_hub::HubConfig {
        county_dir: Some(county.path().to_path_buf()),
        ..hub_config(
            dir.path(),
            std::net::SocketAddr::from(([127, 0, 0, 1], free_port())),
        )
    };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = cloud_hub::Hub::start(config, http)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("county.toml") && err.contains("seat"), "{err}");
}
