"""Data: image folders as datasets, never written to. Finding a folder-per-class set and its split folders
(`scan`), splitting train/validation without moving a file (`splits`), the manifest CSV, decoding a file into a
C x H x W uint8 array (`decode`, `DecodeSettings`), the decode cache outside the dataset (`load_images`), exact and
near-duplicate groups (`duplicate_groups`), label files as data sets (`scan_labels`), DICOM files (`read_dicom`,
`dicom_tags`), object boxes mapped into decoded images (`read_boxes`,
`decoded_boxes`), and the built-in synthetic eclipse set (`synth_eclipse`).

Names are imported from their modules on first use (`cnnlab.lazy_face`).
"""

from cnnlab import lazy_face

_EXPORTS = {
    "Dataset": "folders",
    "Sample": "folders",
    "scan": "folders",
    "check_root": "folders",
    "find_splits": "folders",
    "scored_split": "folders",
    "parse_class_map": "folders",
    "report_skipped": "folders",
    "image_extensions": "folders",
    "scan_labels": "labels",
    "protected_paths": "labels",
    "read_dicom": "dicom",
    "dicom_tags": "dicom",
    "patient_id": "dicom",
    "parse_window": "decode",
    "split_train_val": "splits",
    "split_by_manifest": "splits",
    "block_split_groups": "splits",
    "group_split_groups": "splits",
    "SPLIT_POLICIES": "splits",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
    "manifest_classes": "manifest",
    "DecodeSettings": "decode",
    "BadImage": "decode",
    "decode": "decode",
    "decode_with_geometry": "decode",
    "expand_paths": "image_files",
    "read_images": "image_files",
    "shape_batches": "image_files",
    "ImageSet": "cache",
    "load_images": "cache",
    "default_cache_dir": "cache",
    "duplicate_groups": "duplicates",
    "file_hashes": "duplicates",
    "close_pairs": "duplicates",
    "read_boxes": "boxes",
    "decoded_boxes": "boxes",
    "box_mask": "boxes",
    "synth_eclipse": "synthetic",
    "render_eclipse": "eclipse_render",
    "CLASSES": "eclipse_render",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
