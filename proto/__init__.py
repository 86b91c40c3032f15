"""Caffe schema files: caffe.proto and its compiled descriptor set, caffe.desc."""
