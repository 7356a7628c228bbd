import { createApp } from 'vue'
import './fonts'
import './styles.css'
import App from './App.vue'

createApp(App).mount('#app')
