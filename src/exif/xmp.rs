//! The XMP packet that makes photo viewers show a panorama as a sphere.
//!
//! Google's GPano namespace is what viewers (Google Photos, Facebook, most
//! 360° viewers) look for. The sizes are those of the downloaded file: a
//! 2048-px thumbnail of an 8000-px pano is still a full equirectangular
//! image, only smaller, so full size and cropped size are the same.

use std::fmt::Write;

/// Builds the GPano XMP packet for a panorama.
///
/// `dimensions` is `(width, height)` of the downloaded file; when the frame
/// header defers the height (DNL), the size tags are left out rather than
/// guessed. `heading` is the normalised compass heading, if any.
pub(crate) fn gpano_packet(dimensions: Option<(u32, u32)>, heading: Option<f64>) -> Vec<u8> {
    let mut attrs = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        attrs,
        "\n    GPano:ProjectionType=\"equirectangular\"\n    GPano:UsePanoramaViewer=\"True\""
    );
    if let Some((width, height)) = dimensions {
        let _ = write!(
            attrs,
            "\n    GPano:FullPanoWidthPixels=\"{width}\"\
             \n    GPano:FullPanoHeightPixels=\"{height}\"\
             \n    GPano:CroppedAreaImageWidthPixels=\"{width}\"\
             \n    GPano:CroppedAreaImageHeightPixels=\"{height}\"\
             \n    GPano:CroppedAreaLeftPixels=\"0\"\
             \n    GPano:CroppedAreaTopPixels=\"0\""
        );
    }
    if let Some(degrees) = heading {
        let _ = write!(attrs, "\n    GPano:PoseHeadingDegrees=\"{degrees}\"");
    }
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n\
         <x:xmpmeta xmlns:x=\"adobe:ns:meta/\">\n \
         <rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\n  \
         <rdf:Description rdf:about=\"\"\n    \
         xmlns:GPano=\"http://ns.google.com/photos/1.0/panorama/\"{attrs}/>\n \
         </rdf:RDF>\n\
         </x:xmpmeta>\n\
         <?xpacket end=\"w\"?>"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_has_every_gpano_tag() {
        let packet = String::from_utf8(gpano_packet(Some((2048, 1024)), Some(0.0))).unwrap();
        for needle in [
            "GPano:ProjectionType=\"equirectangular\"",
            "GPano:UsePanoramaViewer=\"True\"",
            "GPano:FullPanoWidthPixels=\"2048\"",
            "GPano:FullPanoHeightPixels=\"1024\"",
            "GPano:CroppedAreaImageWidthPixels=\"2048\"",
            "GPano:CroppedAreaImageHeightPixels=\"1024\"",
            "GPano:CroppedAreaLeftPixels=\"0\"",
            "GPano:CroppedAreaTopPixels=\"0\"",
            "GPano:PoseHeadingDegrees=\"0\"",
        ] {
            assert!(packet.contains(needle), "missing {needle} in {packet}");
        }
    }

    #[test]
    fn unknown_heading_and_size_are_left_out() {
        let packet = String::from_utf8(gpano_packet(None, None)).unwrap();
        assert!(!packet.contains("PoseHeadingDegrees"));
        assert!(!packet.contains("FullPanoWidthPixels"));
        assert!(packet.contains("equirectangular"));
    }
}
