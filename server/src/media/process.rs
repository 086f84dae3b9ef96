//! What the server makes of a finished upload (PROTOCOL.md §11.3): the content type sniffed
//! from its bytes and checked against the declared one, and for images a decode under
//! pixel and memory limits (decompression bombs are refused, not decoded), two JPEG
//! thumbnails (re-encoded, so no EXIF or other metadata survives) and a BlurHash. Pure and
//! blocking: the media layer runs it on the blocking pool, off the chat path.
use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use natter_protocol::pb;

/// Images larger than this in either dimension are refused (a 12,000 px side is far beyond
/// any camera a chat user has; bombs declare 50,000+).
pub const MAX_IMAGE_SIDE: u32 = 12_000;
/// What decoding one image may allocate.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;
/// Images whose file is larger than this are kept but not thumbnailed.
pub const MAX_THUMBNAIL_SOURCE_BYTES: u64 = 50 << 20;

/// Why the bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// Common aliases of declared types, as their registered names.
fn canonical(mime: &str) -> String {
    let essence = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "audio/mp3" => "audio/mpeg".into(),
        "audio/x-wav" => "audio/wav".into(),
        _ => essence,
    }
}

/// The type the bytes show (`infer`'s magic numbers), if it knows them.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    infer::get(head).map(|t| t.mime_type())
}

/// The stored type of a file: the sniffed one when the bytes are recognised — refused if
/// that contradicts the declared one — else the declared one. Formats that are containers
/// of others (zip: office documents, epub, jar; mp4: audio and video) match their members.
pub fn check_type(declared: &str, sniffed: Option<&str>) -> Result<String, Rejected> {
    let declared = canonical(declared);
    let Some(sniffed) = sniffed else {
        if declared.starts_with("image/") && is_raster(&declared) {
            return Err(Rejected(format!(
                "declared {declared} but the bytes are no image the server knows"
            )));
        }
        return Ok(declared);
    };
    let sniffed = canonical(sniffed);
    let zip_family = |m: &str| {
        m == "application/zip"
            || m.starts_with("application/vnd.openxmlformats")
            || m.starts_with("application/vnd.oasis.opendocument")
            || m == "application/epub+zip"
            || m == "application/java-archive"
    };
    let mp4_family = |m: &str| {
        matches!(
            m,
            "video/mp4" | "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "video/quicktime"
        )
    };
    let compatible = declared == sniffed
        || declared == "application/octet-stream"
        || (zip_family(&declared) && zip_family(&sniffed))
        || (mp4_family(&declared) && mp4_family(&sniffed));
    if compatible {
        Ok(sniffed)
    } else {
        Err(Rejected(format!("declared {declared} but the bytes are {sniffed}")))
    }
}

/// Raster images the server decodes and serves inline.
pub fn is_raster(mime: &str) -> bool {
    matches!(mime, "image/png" | "image/jpeg" | "image/gif" | "image/webp")
}

/// Types a browser may show inline (`<img>`, `<video>`, `<audio>`): nothing that can run
/// script. Everything else is served as an attachment.
pub fn inline_safe(mime: &str) -> bool {
    is_raster(mime) || mime.starts_with("video/") || mime.starts_with("audio/")
}

/// A thumbnail made.
#[derive(Debug, Clone)]
pub struct Thumb {
    /// Which.
    pub variant: pb::MediaVariant,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// JPEG bytes.
    pub jpeg: Vec<u8>,
}

/// What an image yields.
#[derive(Debug, Clone)]
pub struct ImageOut {
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// A 4×3 BlurHash.
    pub blurhash: String,
    /// Thumbnails fitting 320² and 800² (never upscaled).
    pub thumbs: Vec<Thumb>,
}

fn format_of(mime: &str) -> Option<ImageFormat> {
    Some(match mime {
        "image/png" => ImageFormat::Png,
        "image/jpeg" => ImageFormat::Jpeg,
        "image/gif" => ImageFormat::Gif,
        "image/webp" => ImageFormat::WebP,
        _ => return None,
    })
}

/// Decode an image of type `mime` under the limits and make its thumbnails and BlurHash.
pub fn image(bytes: &[u8], mime: &str) -> Result<ImageOut, Rejected> {
    let format = format_of(mime).ok_or_else(|| Rejected(format!("{mime} is not an image the server decodes")))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| Rejected(format!("image refused: {e}")))?;
    let (width, height) = (img.width(), img.height());
    let mut thumbs = Vec::new();
    for (variant, side) in [(pb::MediaVariant::Thumb320, 320), (pb::MediaVariant::Thumb800, 800)] {
        let t = if width <= side && height <= side {
            img.clone()
        } else {
            img.thumbnail(side, side)
        };
        thumbs.push(Thumb {
            variant,
            width: t.width(),
            height: t.height(),
            jpeg: jpeg(&t)?,
        });
    }
    Ok(ImageOut {
        width,
        height,
        blurhash: blurhash_of(&img)?,
        thumbs,
    })
}

fn jpeg(img: &DynamicImage) -> Result<Vec<u8>, Rejected> {
    let mut out = Vec::new();
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    rgb.write_with_encoder(enc)
        .map_err(|e| Rejected(format!("thumbnail: {e}")))?;
    Ok(out)
}

fn blurhash_of(img: &DynamicImage) -> Result<String, Rejected> {
    let small = img.thumbnail(32, 32).to_rgba8();
    blurhash::encode(4, 3, small.width(), small.height(), small.as_raw())
        .map_err(|e| Rejected(format!("blurhash: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn declared_types_must_match_the_bytes() {
        let p = png(4, 4);
        let s = sniff(&p);
        assert_eq!(s, Some("image/png"));
        assert_eq!(check_type("image/png", s).unwrap(), "image/png");
        assert_eq!(check_type("application/octet-stream", s).unwrap(), "image/png");
        assert!(check_type("image/jpeg", s).is_err());
        assert!(check_type("application/pdf", s).is_err());
        // Unrecognised bytes keep the declared type, unless that is a raster image.
        assert_eq!(check_type("text/plain", sniff(b"hello")).unwrap(), "text/plain");
        assert!(check_type("image/png", sniff(b"hello")).is_err());
        assert_eq!(check_type("image/jpg", Some("image/jpeg")).unwrap(), "image/jpeg");
        assert_eq!(
            check_type(
                "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                Some("application/zip")
            )
            .unwrap(),
            "application/zip"
        );
    }

    #[test]
    fn images_get_two_thumbnails_never_upscaled_and_a_blurhash() {
        let out = image(&png(1000, 500), "image/png").unwrap();
        assert_eq!((out.width, out.height), (1000, 500));
        let sizes: Vec<(u32, u32)> = out.thumbs.iter().map(|t| (t.width, t.height)).collect();
        assert_eq!(sizes, [(320, 160), (800, 400)]);
        for t in &out.thumbs {
            assert_eq!(sniff(&t.jpeg), Some("image/jpeg"));
        }
        assert!(!out.blurhash.is_empty());
        let small = image(&png(100, 50), "image/png").unwrap();
        assert!(small.thumbs.iter().all(|t| (t.width, t.height) == (100, 50)));
    }

    #[test]
    fn a_decompression_bomb_is_refused_without_decoding() {
        // A valid PNG header that declares 60,000 × 60,000 pixels: 10 GiB decoded.
        let p = bomb_png(60_000);
        let e = image(&p, "image/png").unwrap_err();
        assert!(e.0.contains("limit"), "refused for its size, not as corrupt: {e}");
    }

    /// A 1×1 PNG whose header (with a correct CRC) claims `side` × `side` pixels.
    pub(crate) fn bomb_png(side: u32) -> Vec<u8> {
        let mut p = png(1, 1);
        p[16..20].copy_from_slice(&side.to_be_bytes());
        p[20..24].copy_from_slice(&side.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        p
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
}
