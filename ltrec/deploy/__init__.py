"""From a finished run to answers: the ONNX export with its parity check (`export`), the bundle format
(`bundle`), batch prediction (`predict`) and the HTTP server (`serve`).

`export` imports torch; `bundle`, `predict` and `serve` run on onnxruntime and numpy alone and never import
torch (tests hold them to it).
"""
