# Reference YOLOX-Nano inference exactly as YOLOX demo/ONNXRuntime does it (cv2 preproc, demo_postprocess, multiclass_nms).
import sys, cv2, numpy as np, onnxruntime as ort
sess = ort.InferenceSession("/work/shared/models/yolox_nano.onnx", providers=["CPUExecutionProvider"])
def run(img):
    h, w = img.shape[:2]
    r = min(416/h, 416/w)
    pad = np.full((416,416,3),114,np.uint8)
    rs = cv2.resize(img,(int(w*r),int(h*r)),interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    pad[:int(h*r),:int(w*r)] = rs
    x = pad.transpose(2,0,1)[None].astype(np.float32)
    out = sess.run(None, {"images": x})[0][0]
    grids=[];strides=[]
    for s in (8,16,32):
        g=416//s; yv,xv=np.meshgrid(np.arange(g),np.arange(g),indexing="ij")
        grids.append(np.stack((xv,yv),2).reshape(-1,2)); strides.append(np.full((g*g,1),s))
    grids=np.concatenate(grids); strides=np.concatenate(strides)
    out[:,:2]=(out[:,:2]+grids)*strides; out[:,2:4]=np.exp(out[:,2:4])*strides
    boxes=np.stack([out[:,0]-out[:,2]/2,out[:,1]-out[:,3]/2,out[:,0]+out[:,2]/2,out[:,1]+out[:,3]/2],1)/r
    scores=out[:,4:5]*out[:,5:]
    res=[]
    for c in range(80):
        sc=scores[:,c]; m=sc>0.3
        if not m.any(): continue
        b=boxes[m]; s=sc[m]; order=s.argsort()[::-1]; keep=[]
        while order.size:
            i=order[0]; keep.append(i)
            xx1=np.maximum(b[i,0],b[order[1:],0]); yy1=np.maximum(b[i,1],b[order[1:],1])
            xx2=np.minimum(b[i,2],b[order[1:],2]); yy2=np.minimum(b[i,3],b[order[1:],3])
            inter=np.maximum(0,xx2-xx1+1)*np.maximum(0,yy2-yy1+1)
            a=(b[:,2]-b[:,0]+1)*(b[:,3]-b[:,1]+1)
            ovr=inter/(a[i]+a[order[1:]]-inter)
            order=order[np.where(ovr<=0.45)[0]+1]
        for i in keep: res.append((c,float(s[i]),[round(float(v),1) for v in b[i]]))
    return sorted(res,key=lambda t:-t[1])
img=cv2.imread(sys.argv[1]) if not sys.argv[1].endswith('.avi') else None
if img is None:
    cap=cv2.VideoCapture(sys.argv[1]); cap.set(cv2.CAP_PROP_POS_FRAMES,100); ok,img=cap.read()
print(img.shape)
for r in run(img): print(r)
