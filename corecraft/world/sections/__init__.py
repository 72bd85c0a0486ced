"""The generator's sections: each fills some tables from the shared generator state, in pipeline order."""
