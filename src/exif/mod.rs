//! EXIF/XMP tagging.
