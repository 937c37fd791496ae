"""The pack's custom io types, shared by the node modules (no node module imports another).

A custom type is a name the frontend matches links by: an output connects only to inputs of the
same name. Names are public API (saved workflows hold them): never rename one once shipped.
"""
from __future__ import annotations

from comfy_api.latest import io

PoseKeypoint = io.Custom("POSE_KEYPOINT")  # OpenPose keypoints, the format comfyui_controlnet_aux uses
SamModel = io.Custom("SC_SAM_MODEL")
ClipMatcher = io.Custom("SC_CLIP_MATCHER")
Found = io.Custom("SC_FOUND")  # list[bool], one per image of the batch
CropInfoType = io.Custom("SC_CROP")
Regions = io.Custom("SC_REGIONS")
EditStitch = io.Custom("SC_STITCH")  # ops.editing.EditStitch: where Crop For Edit's crops came from
