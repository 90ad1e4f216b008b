/* Reference forward pass with darknet itself (tools/zoo_darknet.py builds and runs this).
 * usage: zoo_darknet_dump CFG WEIGHTS INPUT.f32 OUTPUT.bin
 * INPUT.f32: the network input, float32 C x H x W (RGB, [0, 1]) at the cfg's width/height.
 * OUTPUT.bin: for every [yolo] / [region] layer in cfg order: int32 type, w, h, n, classes, outputs,
 * then `outputs` float32 of the layer's output buffer after forward (darknet's layout n, entry, h, w). */
#include <stdio.h>
#include <stdlib.h>
#include "darknet.h"

int main(int argc, char **argv)
{
    if (argc != 5) { fprintf(stderr, "usage: %s cfg weights input.f32 output.bin\n", argv[0]); return 2; }
    network *net = load_network_custom(argv[1], argv[2], 0, 1);
    size_t n_in = (size_t)net->w * net->h * net->c;
    float *x = (float *)calloc(n_in, sizeof(float));
    FILE *f = fopen(argv[3], "rb");
    if (!f || fread(x, sizeof(float), n_in, f) != n_in) { fprintf(stderr, "cannot read %s\n", argv[3]); return 1; }
    fclose(f);
    network_predict_ptr(net, x);
    FILE *o = fopen(argv[4], "wb");
    if (!o) return 1;
    for (int i = 0; i < net->n; ++i) {
        layer l = net->layers[i];
        if (l.type != YOLO && l.type != REGION && l.type != GAUSSIAN_YOLO) continue;
        int hdr[6] = { (int)l.type, l.w, l.h, l.n, l.classes, l.outputs };
        fwrite(hdr, sizeof(int), 6, o);
        fwrite(l.output, sizeof(float), l.outputs, o);
    }
    fclose(o);
    return 0;
}
