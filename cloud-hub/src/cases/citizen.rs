//! A citizen's report (Open311 GeoReport v2, `crate::http::open311`): what the citizen sent
//! beyond the case itself, kept with the case ([`CitizenReport`]), and where a reported point
//! lies in the county model ([`locate`]) so that the case is routed by its location.
//!
//! Contact details are kept for the operators (a call back, a question about the place) and
//! are never published back through Open311.

use serde::{Deserialize, Serialize};

use crate::platform::county::County;
use crate::platform::geo::Position;

/// What a citizen sent with a report, stored with its case.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CitizenReport {
    /// The citizen's own words (published back as the request's `description`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A photo or video of the problem, `http(s)://` (published back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_url: Option<String>,
    /// The address as the citizen wrote it (published back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// How to reach the citizen: for the operators, never published.
    #[serde(default, skip_serializing_if = "Contact::is_empty")]
    pub contact: Contact,
    /// The reporting device's id, as the app sent it (Open311 `device_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The citizen's account in the app (Open311 `account_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Open311 `attribute[code]` values, in the order sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<Attribute>,
    /// The API client that filed it: the name of the token its `api_key` was.
    pub client: String,
    /// SHA-256 (hex) of the client, the device id and every field sent: a retried request is
    /// recognised by it and answered with the case it opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// A citizen's contact details (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CitizenContact")]
pub struct Contact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl Contact {
    pub fn is_empty(&self) -> bool {
        *self == Contact::default()
    }
}

/// One `attribute[code]=value` of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "CitizenAttribute")]
pub struct Attribute {
    pub code: String,
    pub value: String,
}

/// Where a point lies in the county model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spot {
    /// The town whose polygon holds the point.
    pub town: Option<String>,
    /// A county zone (a camera's analytics zone on the map) that holds it.
    pub zone: Option<String>,
    /// In a township (乡): outside the built-up area, as `intake::CountyPlaces` decides.
    pub rural: bool,
}

/// The town and zone of `point` (`[lon, lat]`); `None` when no town of the county holds it.
/// Towns are looked up in file order: where sample polygons overlap, the first wins.
pub fn locate(county: &County, point: Position) -> Option<Spot> {
    let town = county.towns.iter().find(|t| t.geometry.contains(point))?;
    let zone = county
        .zones
        .iter()
        .find(|z| z.geometry.contains(point))
        .map(|z| z.props.id.clone());
    Some(Spot {
        town: Some(town.props.id.clone()),
        zone,
        rural: town.props.kind.as_deref() == Some("township"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn county() -> County {
        County::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/county")).unwrap()
    }

    #[test]
    fn points_fall_in_their_town_and_zone() {
        let c = county();
        // The county seat's streets, outside every camera zone.
        let seat = locate(&c, [116.36, 30.85]).unwrap();
        assert_eq!(
            (seat.town.as_deref(), seat.zone, seat.rural),
            (Some("tiantang"), None, false)
        );
        // Inside the no-parking zone in front of the hospital.
        let zone = locate(&c, [116.3613, 30.8515]).unwrap();
        assert_eq!(zone.zone.as_deref(), Some("zone-no-parking-north"));
        // A township: rural.
        let lianyun = locate(&c, [116.28, 30.86]).unwrap();
        assert_eq!(
            (lianyun.town.as_deref(), lianyun.rural),
            (Some("lianyun"), true)
        );
        // Beijing is not in the county.
        assert_eq!(locate(&c, [116.40, 39.90]), None);
    }
}
