"""The demo: generate a 2-class VOC dataset, convert it, fit anchors, train yolov3-tiny from
scratch and evaluate it (:func:`detkit.demo.pipeline.run_demo`), each stage through the same
public function its own command uses.

May import: detkit.train, detkit.evaluate, detkit.convert, detkit.data, detkit.darknet,
detkit.metrics and the leaf modules; only the CLI imports it.
"""
