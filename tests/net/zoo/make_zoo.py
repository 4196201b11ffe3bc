"""Write the large model-zoo nets of tests/net/zoo as Caffe prototxt text.

    python tests/net/zoo/make_zoo.py        # rewrites the *.prototxt files beside this script

The nets are written in the form their users have them: deploy files with
the net-level inputs of their time (GoogLeNet's ``input`` + ``input_shape``,
ResNet-50's ``input`` + four ``input_dim``), in-place ReLUs, BatchNorm + Scale
pairs with ``use_global_stats``, grouped and depthwise convolutions.  Inputs
are at batch 1 and at the nets' real image sizes, so every blob has Caffe's
published shape.  Plain string building; nothing here imports numcaffe.

The small nets (cifar10_quick, cifar10_full, mnist_siamese*) are written by
hand and are not touched by this script.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))


class Enum(str):
    """A protobuf enum value: written without quotes."""


def render(key, value, indent):
    pad = "  " * indent
    if isinstance(value, list):                       # a sub-message: list of (key, value)
        inner = "".join(render(k, v, indent + 1) for k, v in value)
        return f"{pad}{key} {{\n{inner}{pad}}}\n"
    if isinstance(value, bool):
        return f"{pad}{key}: {'true' if value else 'false'}\n"
    if isinstance(value, Enum):
        return f"{pad}{key}: {value}\n"
    if isinstance(value, str):
        return f'{pad}{key}: "{value}"\n'
    return f"{pad}{key}: {value}\n"


def layer(name, type_, bottom=(), top=(), *fields, head_first=False):
    """One ``layer { ... }`` block.  ``head_first`` puts bottom/top before name/type
    (the order of He's ResNet files)."""
    bottom = [bottom] if isinstance(bottom, str) else list(bottom)
    top = [top] if isinstance(top, str) else list(top)
    ident = [("name", name), ("type", type_)]
    wires = [("bottom", b) for b in bottom] + [("top", t) for t in top]
    body = (wires + ident if head_first else ident + wires) + list(fields)
    return render("layer", body, 0)


def lr_params(w=(1, 1), b=(2, 0)):
    """BVLC's usual ``param { lr_mult decay_mult }`` pair for weights and bias."""
    return [("param", [("lr_mult", w[0]), ("decay_mult", w[1])]),
            ("param", [("lr_mult", b[0]), ("decay_mult", b[1])])]


def conv_param(num_output, kernel, stride=1, pad=0, group=1, bias=True, fillers=()):
    p = [("num_output", num_output)]
    if not bias:
        p.append(("bias_term", False))
    if pad:
        p.append(("pad", pad))
    p.append(("kernel_size", kernel))
    if stride != 1:
        p.append(("stride", stride))
    if group != 1:
        p.append(("group", group))
    p.extend(fillers)
    return ("convolution_param", p)


def pool_param(kind, kernel=None, stride=1, pad=0, global_pooling=False):
    p = [("pool", Enum(kind))]
    if global_pooling:
        p.append(("global_pooling", True))
    else:
        p.append(("kernel_size", kernel))
        p.append(("stride", stride))
    if pad:
        p.append(("pad", pad))
    return ("pooling_param", p)


def lrn_param(local_size=5, alpha=0.0001, beta=0.75):
    return ("lrn_param", [("local_size", local_size), ("alpha", alpha), ("beta", beta)])


def relu(name, blob, **kw):
    return layer(name, "ReLU", blob, blob, **kw)


def input_layer(shape, name="data"):
    return layer(name, "Input", (), name, ("input_param", [("shape", [("dim", d) for d in shape])]))


# ------------------------------------------------------------------ AlexNet / CaffeNet


def alexnet(caffenet=False):
    """BVLC AlexNet (norm before pool) or BVLC reference CaffeNet (pool before norm)."""
    name = "CaffeNet" if caffenet else "AlexNet"
    out = [f'name: "{name}"\n', input_layer((1, 3, 227, 227))]

    def conv(n, bottom, num, k, stride=1, pad=0, group=1):
        out.append(layer(n, "Convolution", bottom, n, *lr_params(),
                         conv_param(num, k, stride, pad, group)))

    def norm_pool(i, bottom):
        norm, pool = f"norm{i}", f"pool{i}"
        if caffenet:
            out.append(layer(pool, "Pooling", bottom, pool, pool_param("MAX", 3, 2)))
            out.append(layer(norm, "LRN", pool, norm, lrn_param()))
            return norm
        out.append(layer(norm, "LRN", bottom, norm, lrn_param()))
        out.append(layer(pool, "Pooling", norm, pool, pool_param("MAX", 3, 2)))
        return pool

    conv("conv1", "data", 96, 11, stride=4)
    out.append(relu("relu1", "conv1"))
    b = norm_pool(1, "conv1")
    conv("conv2", b, 256, 5, pad=2, group=2)
    out.append(relu("relu2", "conv2"))
    b = norm_pool(2, "conv2")
    conv("conv3", b, 384, 3, pad=1)
    out.append(relu("relu3", "conv3"))
    conv("conv4", "conv3", 384, 3, pad=1, group=2)
    out.append(relu("relu4", "conv4"))
    conv("conv5", "conv4", 256, 3, pad=1, group=2)
    out.append(relu("relu5", "conv5"))
    out.append(layer("pool5", "Pooling", "conv5", "pool5", pool_param("MAX", 3, 2)))
    bottom = "pool5"
    for i, num in ((6, 4096), (7, 4096)):
        fc = f"fc{i}"
        out.append(layer(fc, "InnerProduct", bottom, fc, *lr_params(),
                         ("inner_product_param", [("num_output", num)])))
        out.append(relu(f"relu{i}", fc))
        out.append(layer(f"drop{i}", "Dropout", fc, fc, ("dropout_param", [("dropout_ratio", 0.5)])))
        bottom = fc
    out.append(layer("fc8", "InnerProduct", "fc7", "fc8", *lr_params(),
                     ("inner_product_param", [("num_output", 1000)])))
    out.append(layer("prob", "Softmax", "fc8", "prob"))
    return "".join(out)


# ------------------------------------------------------------------ GoogLeNet

#: Inception modules of GoogLeNet (Szegedy et al. 2014, table 1):
#: name -> (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
INCEPTION = [
    ("3a", (64, 96, 128, 16, 32, 32)), ("3b", (128, 128, 192, 32, 96, 64)),
    ("4a", (192, 96, 208, 16, 48, 64)), ("4b", (160, 112, 224, 24, 64, 64)),
    ("4c", (128, 128, 256, 24, 64, 64)), ("4d", (112, 144, 288, 32, 64, 64)),
    ("4e", (256, 160, 320, 32, 128, 128)),
    ("5a", (256, 160, 320, 32, 128, 128)), ("5b", (384, 192, 384, 48, 128, 128)),
]


def googlenet():
    """BVLC GoogLeNet deploy; the two auxiliary classifiers run only with stage "aux"."""
    xavier = lambda std: ("weight_filler", [("type", "xavier"), ("std", std)])  # noqa: E731
    bias02 = ("bias_filler", [("type", "constant"), ("value", 0.2)])
    out = ['name: "GoogleNet"\n', 'input: "data"\n',
           render("input_shape", [("dim", d) for d in (1, 3, 224, 224)], 0)]

    def conv(n, bottom, num, k, stride=1, pad=0, std=0.03, relu_name=None):
        out.append(layer(n, "Convolution", bottom, n, *lr_params(),
                         conv_param(num, k, stride, pad, fillers=(xavier(std), bias02))))
        out.append(relu(relu_name, n))

    conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3, std=0.1, relu_name="conv1/relu_7x7")
    out.append(layer("pool1/3x3_s2", "Pooling", "conv1/7x7_s2", "pool1/3x3_s2", pool_param("MAX", 3, 2)))
    out.append(layer("pool1/norm1", "LRN", "pool1/3x3_s2", "pool1/norm1", lrn_param()))
    conv("conv2/3x3_reduce", "pool1/norm1", 64, 1, std=0.1, relu_name="conv2/relu_3x3_reduce")
    conv("conv2/3x3", "conv2/3x3_reduce", 192, 3, pad=1, relu_name="conv2/relu_3x3")
    out.append(layer("conv2/norm2", "LRN", "conv2/3x3", "conv2/norm2", lrn_param()))
    out.append(layer("pool2/3x3_s2", "Pooling", "conv2/norm2", "pool2/3x3_s2", pool_param("MAX", 3, 2)))
    bottom = "pool2/3x3_s2"
    for tag, (n1, r3, n3, r5, n5, pp) in INCEPTION:
        m = f"inception_{tag}"
        conv(f"{m}/1x1", bottom, n1, 1, relu_name=f"{m}/relu_1x1")
        conv(f"{m}/3x3_reduce", bottom, r3, 1, std=0.09, relu_name=f"{m}/relu_3x3_reduce")
        conv(f"{m}/3x3", f"{m}/3x3_reduce", n3, 3, pad=1, relu_name=f"{m}/relu_3x3")
        conv(f"{m}/5x5_reduce", bottom, r5, 1, std=0.2, relu_name=f"{m}/relu_5x5_reduce")
        conv(f"{m}/5x5", f"{m}/5x5_reduce", n5, 5, pad=2, relu_name=f"{m}/relu_5x5")
        out.append(layer(f"{m}/pool", "Pooling", bottom, f"{m}/pool", pool_param("MAX", 3, 1, pad=1)))
        conv(f"{m}/pool_proj", f"{m}/pool", pp, 1, std=0.1, relu_name=f"{m}/relu_pool_proj")
        out.append(layer(f"{m}/output", "Concat", [f"{m}/1x1", f"{m}/3x3", f"{m}/5x5", f"{m}/pool_proj"],
                         f"{m}/output"))
        bottom = f"{m}/output"
        if tag in ("4a", "4d"):
            out.append(aux_classifier("loss1" if tag == "4a" else "loss2", bottom))
        if tag in ("3b", "4e"):
            pool = "pool3/3x3_s2" if tag == "3b" else "pool4/3x3_s2"
            out.append(layer(pool, "Pooling", bottom, pool, pool_param("MAX", 3, 2)))
            bottom = pool
    out.append(layer("pool5/7x7_s1", "Pooling", bottom, "pool5/7x7_s1", pool_param("AVE", 7, 1)))
    out.append(layer("pool5/drop_7x7_s1", "Dropout", "pool5/7x7_s1", "pool5/7x7_s1",
                     ("dropout_param", [("dropout_ratio", 0.4)])))
    out.append(layer("loss3/classifier", "InnerProduct", "pool5/7x7_s1", "loss3/classifier", *lr_params(),
                     ("inner_product_param", [("num_output", 1000),
                                              ("weight_filler", [("type", "xavier")]),
                                              ("bias_filler", [("type", "constant"), ("value", 0)])])))
    out.append(layer("prob", "Softmax", "loss3/classifier", "prob"))
    return "".join(out)


def aux_classifier(head, bottom):
    """GoogLeNet's auxiliary classifier (train_val's loss1/loss2 towers), as probabilities."""
    aux = ("include", [("stage", "aux")])
    ip_fillers = [("weight_filler", [("type", "xavier")]), ("bias_filler", [("type", "constant"), ("value", 0.2)])]
    parts = [
        layer(f"{head}/ave_pool", "Pooling", bottom, f"{head}/ave_pool", aux, pool_param("AVE", 5, 3)),
        layer(f"{head}/conv", "Convolution", f"{head}/ave_pool", f"{head}/conv", aux, *lr_params(),
              conv_param(128, 1, fillers=(("weight_filler", [("type", "xavier"), ("std", 0.08)]),
                                          ("bias_filler", [("type", "constant"), ("value", 0.2)])))),
        layer(f"{head}/relu_conv", "ReLU", f"{head}/conv", f"{head}/conv", aux),
        layer(f"{head}/fc", "InnerProduct", f"{head}/conv", f"{head}/fc", aux, *lr_params(),
              ("inner_product_param", [("num_output", 1024)] + ip_fillers)),
        layer(f"{head}/relu_fc", "ReLU", f"{head}/fc", f"{head}/fc", aux),
        layer(f"{head}/drop_fc", "Dropout", f"{head}/fc", f"{head}/fc", aux,
              ("dropout_param", [("dropout_ratio", 0.7)])),
        layer(f"{head}/classifier", "InnerProduct", f"{head}/fc", f"{head}/classifier", aux, *lr_params(),
              ("inner_product_param", [("num_output", 1000)] + ip_fillers)),
        layer(f"{head}/prob", "Softmax", f"{head}/classifier", f"{head}/prob", aux),
    ]
    return "".join(parts)


# ------------------------------------------------------------------ ResNet-50


def resnet50():
    """He et al.'s ResNet-50-deploy.prototxt: net-level input_dim, BN/Scale in place, bias only in conv1."""
    out = ['name: "ResNet-50"\n', 'input: "data"\n'] + [f"input_dim: {d}\n" for d in (1, 3, 224, 224)]
    L = lambda *a: out.append(layer(*a, head_first=True))  # noqa: E731

    def conv_bn(blob, bottom, num, k, stride=1, pad=0, bn="", scale="", bias=False, relu_name=None):
        L(blob, "Convolution", bottom, blob, conv_param(num, k, stride, pad, bias=bias))
        L(bn, "BatchNorm", blob, blob, ("batch_norm_param", [("use_global_stats", True)]))
        L(scale, "Scale", blob, blob, ("scale_param", [("bias_term", True)]))
        if relu_name:
            L(relu_name, "ReLU", blob, blob)

    conv_bn("conv1", "data", 64, 7, stride=2, pad=3, bn="bn_conv1", scale="scale_conv1", bias=True,
            relu_name="conv1_relu")
    L("pool1", "Pooling", "conv1", "pool1", pool_param("MAX", 3, 2))
    bottom = "pool1"
    for stage, (width, blocks) in zip((2, 3, 4, 5), ((64, 3), (128, 4), (256, 6), (512, 3))):
        for i in range(blocks):
            tag = f"{stage}{chr(ord('a') + i)}"
            stride = 2 if (i == 0 and stage > 2) else 1
            if i == 0:
                shortcut = f"res{tag}_branch1"
                conv_bn(shortcut, bottom, 4 * width, 1, stride=stride, bn=f"bn{tag}_branch1",
                        scale=f"scale{tag}_branch1")
            else:
                shortcut = bottom
            b = f"res{tag}_branch2"
            conv_bn(b + "a", bottom, width, 1, stride=stride, bn=f"bn{tag}_branch2a", scale=f"scale{tag}_branch2a",
                    relu_name=f"res{tag}_branch2a_relu")
            conv_bn(b + "b", b + "a", width, 3, pad=1, bn=f"bn{tag}_branch2b", scale=f"scale{tag}_branch2b",
                    relu_name=f"res{tag}_branch2b_relu")
            conv_bn(b + "c", b + "b", 4 * width, 1, bn=f"bn{tag}_branch2c", scale=f"scale{tag}_branch2c")
            L(f"res{tag}", "Eltwise", [shortcut, b + "c"], f"res{tag}")
            L(f"res{tag}_relu", "ReLU", f"res{tag}", f"res{tag}")
            bottom = f"res{tag}"
    L("pool5", "Pooling", bottom, "pool5", pool_param("AVE", 7, 1))
    L("fc1000", "InnerProduct", "pool5", "fc1000", ("inner_product_param", [("num_output", 1000)]))
    L("prob", "Softmax", "fc1000", "prob")
    return "".join(out)


# ------------------------------------------------------------------ SqueezeNet v1.1

#: fire modules of SqueezeNet v1.1: (name, squeeze, expand1x1 = expand3x3); pools follow fire3 and fire5.
FIRES = [("fire2", 16, 64), ("fire3", 16, 64), ("fire4", 32, 128), ("fire5", 32, 128),
         ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256)]


def squeezenet11():
    """DeepScale's SqueezeNet_v1.1/deploy.prototxt."""
    out = [input_layer((1, 3, 227, 227))]
    xavier = (("weight_filler", [("type", "xavier")]),)

    def conv(n, bottom, num, k, stride=1, pad=0, relu_name=None, fillers=xavier):
        out.append(layer(n, "Convolution", bottom, n, conv_param(num, k, stride, pad, fillers=fillers)))
        if relu_name:
            out.append(relu(relu_name, n))

    conv("conv1", "data", 64, 3, stride=2, relu_name="relu_conv1")
    out.append(layer("pool1", "Pooling", "conv1", "pool1", pool_param("MAX", 3, 2)))
    bottom = "pool1"
    for fire, s, e in FIRES:
        conv(f"{fire}/squeeze1x1", bottom, s, 1, relu_name=f"{fire}/relu_squeeze1x1")
        conv(f"{fire}/expand1x1", f"{fire}/squeeze1x1", e, 1, relu_name=f"{fire}/relu_expand1x1")
        conv(f"{fire}/expand3x3", f"{fire}/squeeze1x1", e, 3, pad=1, relu_name=f"{fire}/relu_expand3x3")
        out.append(layer(f"{fire}/concat", "Concat", [f"{fire}/expand1x1", f"{fire}/expand3x3"], f"{fire}/concat"))
        bottom = f"{fire}/concat"
        if fire in ("fire3", "fire5"):
            pool = "pool3" if fire == "fire3" else "pool5"
            out.append(layer(pool, "Pooling", bottom, pool, pool_param("MAX", 3, 2)))
            bottom = pool
    out.append(layer("drop9", "Dropout", bottom, bottom, ("dropout_param", [("dropout_ratio", 0.5)])))
    conv("conv10", bottom, 1000, 1, relu_name="relu_conv10",
         fillers=(("weight_filler", [("type", "gaussian"), ("mean", 0.0), ("std", 0.01)]),))
    out.append(layer("pool10", "Pooling", "conv10", "pool10", pool_param("AVE", global_pooling=True)))
    out.append(layer("prob", "Softmax", "pool10", "prob"))
    return "".join(out)


# ------------------------------------------------------------------ MobileNet v1 / v2

def _bn_scale(out, blob, prefix):
    """BatchNorm + Scale in place on ``blob``, named ``prefix/bn`` and ``prefix/scale``."""
    out.append(layer(f"{prefix}/bn", "BatchNorm", blob, blob,
                     ("param", [("lr_mult", 0), ("decay_mult", 0)]),
                     ("param", [("lr_mult", 0), ("decay_mult", 0)]),
                     ("param", [("lr_mult", 0), ("decay_mult", 0)]),
                     ("batch_norm_param", [("use_global_stats", True), ("eps", 1e-5)])))
    out.append(layer(f"{prefix}/scale", "Scale", blob, blob,
                     ("param", [("lr_mult", 1), ("decay_mult", 0)]),
                     ("param", [("lr_mult", 1), ("decay_mult", 0)]),
                     ("scale_param", [("filler", [("value", 1)]), ("bias_term", True),
                                      ("bias_filler", [("value", 0)])])))


def _conv_bn(out, n, bottom, num, k, stride=1, pad=0, group=1, act=None, act_name=None):
    """conv (no bias, msra) + BN + Scale (+ activation in place).  ``act``: "relu", "relu6" or None."""
    fields = [("param", [("lr_mult", 1), ("decay_mult", 1)]),
              conv_param(num, k, stride, pad, group, bias=False,
                         fillers=(("weight_filler", [("type", "msra")]),))]
    if group != 1:
        fields[-1][1].append(("engine", Enum("CAFFE")))       # as the depthwise layers in the wild
    out.append(layer(n, "Convolution", bottom, n, *fields))
    _bn_scale(out, n, n)
    if act == "relu":
        out.append(relu(act_name, n))
    elif act == "relu6":
        out.append(layer(act_name, "Clip", n, n, ("clip_param", [("min", 0), ("max", 6)])))


def _mobilenet_classifier(out, bottom):
    """Both MobileNets' head: global average pooling, a 1x1 convolution to 1000 classes, softmax."""
    out.append(layer("pool6", "Pooling", bottom, "pool6", pool_param("AVE", global_pooling=True)))
    out.append(layer("fc7", "Convolution", "pool6", "fc7",
                     ("param", [("lr_mult", 1), ("decay_mult", 1)]), ("param", [("lr_mult", 2), ("decay_mult", 0)]),
                     conv_param(1000, 1, fillers=(("weight_filler", [("type", "msra")]),
                                                  ("bias_filler", [("type", "constant"), ("value", 0)])))))
    out.append(layer("prob", "Softmax", "fc7", "prob"))


#: MobileNet v1: (name, depthwise stride, pointwise outputs) of the 13 separable blocks.
MOBILENET_V1 = [("conv2_1", 1, 64), ("conv2_2", 2, 128), ("conv3_1", 1, 128), ("conv3_2", 2, 256),
                ("conv4_1", 1, 256), ("conv4_2", 2, 512), ("conv5_1", 1, 512), ("conv5_2", 1, 512),
                ("conv5_3", 1, 512), ("conv5_4", 1, 512), ("conv5_5", 1, 512), ("conv5_6", 2, 1024),
                ("conv6", 1, 1024)]


def mobilenet_v1():
    """MobileNet v1 (1.0, 224) as in shicai/MobileNet-Caffe: depthwise = group == channels."""
    out = ['name: "MobileNet-v1"\n', 'input: "data"\n'] + [f"input_dim: {d}\n" for d in (1, 3, 224, 224)]
    _conv_bn(out, "conv1", "data", 32, 3, stride=2, pad=1, act="relu", act_name="relu1")
    bottom, channels = "conv1", 32
    for name, stride, num in MOBILENET_V1:
        tag = name[4:]
        _conv_bn(out, f"{name}/dw", bottom, channels, 3, stride=stride, pad=1, group=channels,
                 act="relu", act_name=f"relu{tag}/dw")
        _conv_bn(out, f"{name}/sep", f"{name}/dw", num, 1, act="relu", act_name=f"relu{tag}/sep")
        bottom, channels = f"{name}/sep", num
    _mobilenet_classifier(out, bottom)
    return "".join(out)


#: MobileNet v2 bottlenecks (Sandler et al. 2018, table 2): (expansion t, outputs c, repeats n, stride s).
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2():
    """MobileNet v2 (1.0, 224): inverted residuals with linear bottlenecks and Eltwise sums.

    Blocks are named conv<stage>_<i> in the style of shicai/MobileNet-Caffe; ReLU6 is
    a Clip layer (min 0, max 6).  A block with t == 1 has no expansion conv (as in the paper).
    """
    out = ['name: "MobileNet-v2"\n', input_layer((1, 3, 224, 224))]
    _conv_bn(out, "conv1", "data", 32, 3, stride=2, pad=1, act="relu6", act_name="relu1")
    bottom, channels = "conv1", 32
    names = [f"conv{s}_{i}" for s, count in ((2, 2), (3, 2), (4, 7), (5, 3), (6, 3)) for i in range(1, count + 1)]
    k = 0
    for t, c, n, s in MOBILENET_V2:
        for i in range(n):
            name = names[k]
            tag = name[4:]
            k += 1
            stride = s if i == 0 else 1
            x = bottom
            hidden = channels * t
            if t != 1:
                _conv_bn(out, f"{name}/expand", x, hidden, 1, act="relu6", act_name=f"relu{tag}/expand")
                x = f"{name}/expand"
            _conv_bn(out, f"{name}/dwise", x, hidden, 3, stride=stride, pad=1, group=hidden,
                     act="relu6", act_name=f"relu{tag}/dwise")
            _conv_bn(out, f"{name}/linear", f"{name}/dwise", c, 1)
            top = f"{name}/linear"
            if stride == 1 and channels == c:
                out.append(layer(f"block_{tag}", "Eltwise", [bottom, top], f"block_{tag}"))
                top = f"block_{tag}"
            bottom, channels = top, c
    _conv_bn(out, "conv6_4", bottom, 1280, 1, act="relu6", act_name="relu6_4")
    _mobilenet_classifier(out, "conv6_4")
    return "".join(out)


NETS = {
    "bvlc_alexnet.prototxt": lambda: alexnet(caffenet=False),
    "bvlc_reference_caffenet.prototxt": lambda: alexnet(caffenet=True),
    "bvlc_googlenet.prototxt": googlenet,
    "resnet50_deploy.prototxt": resnet50,
    "squeezenet_v1.1.prototxt": squeezenet11,
    "mobilenet_v1.prototxt": mobilenet_v1,
    "mobilenet_v2.prototxt": mobilenet_v2,
}


def main():
    for filename, make in NETS.items():
        text = make()
        with open(os.path.join(HERE, filename), "w") as f:
            f.write(text)
        print(f"wrote {filename}: {text.count('layer {')} layers")


if __name__ == "__main__":
    main()
