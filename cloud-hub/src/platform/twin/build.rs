//! Entities from the county model.
//!
//! Ids: `urn:ngsi-ld:{Type}:{county id}:{object id}` for what the county's GIS files define
//! (towns, road segments, intersections, zones), and `urn:ngsi-ld:{Type}:{site}:{device}[:{local}]`
//! for devices, i.e. the wire id with `/` turned into `:` (`yuexi/gw-demo-01/cam-tiantang-01` →
//! `urn:ngsi-ld:Camera:yuexi:gw-demo-01:cam-tiantang-01`), so a device's entity id follows
//! from its MQTT topic without a lookup table.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Entity, EntityType, Links, Rel};
use crate::platform::county::{County, Placed};
use crate::platform::geo::Geometry;

pub fn area_id(kind: EntityType, county: &str, id: &str) -> String {
    format!("urn:ngsi-ld:{}:{county}:{id}", kind.as_str())
}

pub fn device_id(kind: EntityType, wire_id: &str) -> String {
    format!(
        "urn:ngsi-ld:{}:{}",
        kind.as_str(),
        wire_id.replace('/', ":")
    )
}

fn entity(id: String, kind: EntityType, location: Option<Geometry>) -> Entity {
    Entity {
        id,
        kind,
        location,
        props: BTreeMap::new(),
        rels: BTreeMap::new(),
        live: BTreeMap::new(),
    }
}

fn put(e: &mut Entity, name: &str, v: Option<Value>) {
    if let Some(v) = v {
        e.props.insert(name.to_string(), v);
    }
}

fn names(e: &mut Entity, name: &str, name_en: &Option<String>) {
    put(e, "name", Some(json!(name)));
    put(e, "nameEn", name_en.as_ref().map(|s| json!(s)));
}

/// Shared by gateways, cameras and sensors.
fn placed(e: &mut Entity, county: &str, p: &Placed) {
    names(e, &p.name, &p.name_en);
    put(e, "model", p.model.as_ref().map(|s| json!(s)));
    put(e, "department", p.department.as_ref().map(|s| json!(s)));
    put(e, "installed", p.installed.as_ref().map(|s| json!(s)));
    if let Some(t) = &p.town {
        e.rels.insert(
            "refTown".into(),
            Rel::One(area_id(EntityType::Town, county, t)),
        );
    }
}

/// `site/device` of a `site/device/local` id, and the local part.
fn split_device(id: &str) -> Option<(&str, &str)> {
    let (gw, local) = id.rsplit_once('/')?;
    gw.contains('/').then_some((gw, local))
}

pub(crate) fn entities(c: &County) -> (Vec<Entity>, Links) {
    let cid = c.county.id.as_str();
    let mut out = Vec::new();
    let mut links = Links::default();
    let town_rel = |e: &mut Entity, town: &Option<String>| {
        if let Some(t) = town {
            e.rels.insert(
                "refTown".into(),
                Rel::One(area_id(EntityType::Town, cid, t)),
            );
        }
    };
    for t in &c.towns {
        let mut e = entity(
            area_id(EntityType::Town, cid, &t.props.id),
            EntityType::Town,
            Some(t.geometry.clone()),
        );
        names(&mut e, &t.props.name, &t.props.name_en);
        put(&mut e, "kind", t.props.kind.as_ref().map(|s| json!(s)));
        out.push(e);
    }
    // Which cameras' counting lines measure each road (for the road's `refCamera`).
    let mut observing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for cam in &c.cameras {
        for road in cam.lines.values() {
            let v = observing.entry(road.as_str()).or_default();
            let id = device_id(EntityType::Camera, &cam.id);
            if !v.contains(&id) {
                v.push(id);
            }
        }
    }
    for r in &c.roads {
        let p = &r.props;
        let kind = if p.kind == "intersection" {
            EntityType::Intersection
        } else {
            EntityType::RoadSegment
        };
        let mut e = entity(area_id(kind, cid, &p.id), kind, Some(r.geometry.clone()));
        names(&mut e, &p.name, &p.name_en);
        put(&mut e, "roadClass", p.road_class.as_ref().map(|s| json!(s)));
        town_rel(&mut e, &p.town);
        if kind == EntityType::Intersection && !p.roads.is_empty() {
            let roads = p
                .roads
                .iter()
                .map(|x| area_id(EntityType::RoadSegment, cid, x))
                .collect();
            e.rels.insert("refRoadSegment".into(), Rel::Many(roads));
        }
        if let Some(cams) = observing.get(p.id.as_str()) {
            e.rels.insert("refCamera".into(), Rel::Many(cams.clone()));
        }
        out.push(e);
    }
    for z in &c.zones {
        let p = &z.props;
        let mut e = entity(
            area_id(EntityType::Zone, cid, &p.id),
            EntityType::Zone,
            Some(z.geometry.clone()),
        );
        names(&mut e, &p.name, &p.name_en);
        put(&mut e, "purpose", p.purpose.as_ref().map(|s| json!(s)));
        put(
            &mut e,
            "cameraZone",
            p.camera_zone.as_ref().map(|s| json!(s)),
        );
        town_rel(&mut e, &p.town);
        if let Some(cam) = &p.camera {
            e.rels.insert(
                "refCamera".into(),
                Rel::One(device_id(EntityType::Camera, cam)),
            );
            if let Some(cz) = &p.camera_zone {
                links.zones.insert((cam.clone(), cz.clone()), out.len());
            }
        }
        out.push(e);
    }
    for g in &c.gateways {
        let mut e = entity(
            device_id(EntityType::Gateway, &g.id),
            EntityType::Gateway,
            Some(Geometry::Point(g.placed.location)),
        );
        placed(&mut e, cid, &g.placed);
        put(&mut e, "firmware", g.firmware.as_ref().map(|s| json!(s)));
        put(&mut e, "wireId", Some(json!(g.id)));
        links.gateways.insert(g.id.clone(), out.len());
        out.push(e);
    }
    for cam in &c.cameras {
        let mut e = entity(
            device_id(EntityType::Camera, &cam.id),
            EntityType::Camera,
            Some(Geometry::Point(cam.placed.location)),
        );
        placed(&mut e, cid, &cam.placed);
        put(&mut e, "headingDeg", cam.heading_deg.map(|h| json!(h)));
        put(&mut e, "wireId", Some(json!(cam.id)));
        if let Some(r) = &cam.road {
            e.rels.insert(
                "refRoadSegment".into(),
                Rel::One(area_id(EntityType::RoadSegment, cid, r)),
            );
        }
        let idx = out.len();
        links.cameras.insert(cam.id.clone(), idx);
        if let Some((gw, local)) = split_device(&cam.id) {
            e.rels.insert(
                "refGateway".into(),
                Rel::One(device_id(EntityType::Gateway, gw)),
            );
            links
                .gateway_cameras
                .entry(gw.to_string())
                .or_default()
                .push((local.to_string(), idx));
            for (line, road) in &cam.lines {
                let road_id = area_id(EntityType::RoadSegment, cid, road);
                // Roads come before devices, so the road entity is already indexed.
                if let Some(ri) = out.iter().position(|x| x.id == road_id) {
                    links
                        .gateway_lines
                        .entry(gw.to_string())
                        .or_default()
                        .push((local.to_string(), line.clone(), ri));
                }
            }
        }
        out.push(e);
    }
    for s in &c.sensors {
        let mut e = entity(
            device_id(EntityType::Sensor, &s.id),
            EntityType::Sensor,
            Some(Geometry::Point(s.placed.location)),
        );
        placed(&mut e, cid, &s.placed);
        put(&mut e, "sensorKind", Some(json!(s.kind)));
        put(&mut e, "metrics", Some(json!(s.metrics)));
        put(&mut e, "wireId", Some(json!(s.id)));
        let idx = out.len();
        links.sensors.insert(s.id.clone(), idx);
        if let Some((gw, local)) = split_device(&s.id) {
            e.rels.insert(
                "refGateway".into(),
                Rel::One(device_id(EntityType::Gateway, gw)),
            );
            links
                .gateway_sensors
                .entry(gw.to_string())
                .or_default()
                .push((local.to_string(), idx));
        }
        out.push(e);
    }
    (out, links)
}
